"""`bnlab collapse` as a function: options → `run_collapse(options)` → `CollapseResult.write(out)`.

A deep fully connected ReLU net at init, with and without centring: the channel-mean share per
layer against the arc-cosine recursion (the batch-norm post's argument for why deep nets without
normalisation collapse to near-constant outputs; see docs/background.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import validate as check
from ..errors import BnlabError
from ..io.folder import result_folder
from ..io.jsonfile import write_json
from ..io.result import write_files
from ..io.torchfile import atomic_torch_save
from ..options import opt
from .fcnet import fc_collapse

RECORD_FILE = "collapse.json"
VALUES_FILE = "collapse_values.pt"
# Each layer holds a width x width weight and the n_inputs x width activations (float32): bounded so
# that an absurd --width or --inputs is refused up front instead of failing in the allocation.
MAX_LAYER_FLOATS = 1 << 30  # 4 GiB
MAX_DEPTH = 10_000


@dataclass(frozen=True)
class CollapseOptions:
    depth: int = opt(50, help="Layers of the ReLU MLP.", domain=f"1..{MAX_DEPTH}")
    width: int = opt(2048, help="Units per layer.", domain=">= 1")
    n_inputs: int = opt(1000, flag="--inputs", help="Number of isotropic Gaussian inputs.", domain=">= 2")
    hist_layers: tuple[int, ...] = opt((1, 2, 5, 10, 20, 50), help="Layers whose per-channel values are saved (for "
                                       "KDE plots); those beyond --depth are dropped.", domain=">= 1")
    hist_channels: int = opt(8, help="Channels saved per layer.", domain="1..--width")
    seed: int = opt(0, help="Seed of the weights and inputs.", domain="0..2^32-1")

    def validate(self) -> None:
        check.integer("--depth", self.depth, 1, MAX_DEPTH)
        check.integer("--width", self.width, 1)
        check.integer("--inputs", self.n_inputs, 2)
        floats = self.width * (self.width + self.n_inputs)
        if floats > MAX_LAYER_FLOATS:
            raise BnlabError(f"--width {self.width} with --inputs {self.n_inputs} needs {floats * 4 / 2**30:.3g} "
                             f"GiB per layer (width x (width + inputs) floats); at most {MAX_LAYER_FLOATS >> 28:g} GiB")
        check.integer("--hist-channels", self.hist_channels, 1)
        check.seed("--seed", self.seed)
        for layer in self.hist_layers:
            check.integer("--hist-layers", layer, 1)
        if self.hist_channels > self.width:
            raise BnlabError(f"--hist-channels {self.hist_channels} exceeds --width {self.width}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({n for n in self.hist_layers if n <= self.depth}))


@dataclass
class CollapseResult:
    record: dict[str, Any]  # what collapse.json holds
    values: dict[str, dict[str, torch.Tensor]]  # plain/centred -> layer -> (channels, inputs)

    def write(self, out: str | Path) -> list[Path]:
        out = result_folder(out)
        return write_files([lambda: atomic_torch_save(self.values, out / VALUES_FILE),
                            lambda: write_json(out / RECORD_FILE, self.record, indent=1)])


def run_collapse(opts: CollapseOptions, *, device: str | torch.device = "cpu") -> CollapseResult:
    opts.validate()
    runs = {name: fc_collapse(opts.depth, opts.width, opts.n_inputs, centre=centre, seed=opts.seed,
                              hist_layers=opts.layers, hist_channels=opts.hist_channels, device=device)
            for name, centre in (("plain", False), ("centred", True))}
    record = {"depth": opts.depth, "width": opts.width, "n_inputs": opts.n_inputs, "seed": opts.seed,
              "device": str(device), "hist_layers": list(opts.layers),
              "theory_correlation": runs["plain"]["theory"], "theory_share": runs["plain"]["theory_share"],
              "share_plain": runs["plain"]["shares"], "share_centred": runs["centred"]["shares"],
              # max/median of the inputs' pre-activation norms per layer (see fcnet)
              "norm_spread_plain": runs["plain"]["norm_spread"],
              "norm_spread_centred": runs["centred"]["norm_spread"]}
    values = {name: {str(k): v for k, v in r["values"].items()} for name, r in runs.items()}
    return CollapseResult(record, values)
