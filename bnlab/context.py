"""The analysis context: a checkpoint's model, its fixed evaluation batches, BN mode and loss, built once.

Every analysis of a checkpoint (`bnlab hessian`, `bnlab outstats`, the reproduction pipeline) reads
the same thing: the run's training loss on a fixed, class-balanced, unaugmented set of training
images, in fixed batches, with BN in an explicit mode. `build_context` makes it from a loaded
`Checkpoint` (the CLI loads the file and resolves the device once, at the edge):

- the data are found as the checkpoint's run found them (its recorded DataSpec, subset drawn with
  the run's seed), or in `EvalSpec.data_dir`;
- `num_samples` images are drawn class-balanced with `eval_seed` and cut into batches of
  `batch_size` (the last one smaller when it does not divide);
- the loss is the run's (cross-entropy with its label smoothing);
- the model is used as it is, or a copy is moved to the device / dtype asked for, so the caller's
  model never changes.

`settings()` records all of it (and the checkpoint's sha256) for the result files.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import validate as check
from .bnmode import BN_MODES, resolve_bn_mode
from .checkpoint import WEIGHTS, Checkpoint, file_hash, load_checkpoint
from .data import Data, eval_batches, eval_set, load_data
from .device import resolve_device
from .errors import BnlabError
from .norms import GhostBatchNorm
from .options import opt
from .runtime import tune_allocator

DEFAULT_NUM_SAMPLES = 2560
DEFAULT_BATCH_SIZE = 256  # as in the batch-norm post
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class EvalSpec:
    """Which fixed data an analysis evaluates the loss on, and how BN sees it."""

    num_samples: int | None = opt(DEFAULT_NUM_SAMPLES, help="Size of the fixed class-balanced evaluation set "
                                  "drawn from the training data.", unit="images", domain="multiple of 10")
    # None (the whole subset) is for the Python API; the command line always names a size.
    batch_size: int = opt(DEFAULT_BATCH_SIZE, help="Fixed batches of the evaluation set (the last one smaller "
                          "if it does not divide).", unit="images per batch", domain=">= 1")
    bn_mode: str | None = opt(None, choices=BN_MODES, help="BN statistics: batch (as in training) or running "
                              "(eval).", default_text="batch for models with BN, none otherwise")
    eval_seed: int = opt(0, help="Seed of the evaluation-set draw.", domain="0..2^32-1")
    data_dir: str | None = opt(None, path=True, help="CIFAR-10 folder or tarball.",
                               default_text="as the checkpoint's run found it")
    dtype: str | None = opt(None, choices=DTYPES, help="Compute dtype.", default_text="the checkpoint's, float32")
    weights: str = opt("raw", choices=WEIGHTS, help="The trained weights, or ema: their moving average (runs "
                       "trained with --ema).")

    def validate(self) -> None:
        if self.num_samples is not None:
            check.integer("--num-samples", self.num_samples, 10)
            if self.num_samples % 10:
                raise BnlabError(f"--num-samples must be a positive multiple of 10 (class-balanced), "
                                 f"got {self.num_samples}")
        check.integer("--batch-size", self.batch_size, 1)
        check.seed("--eval-seed", self.eval_seed)
        if self.bn_mode is not None:
            check.choice("--bn-mode", self.bn_mode, BN_MODES)
        if self.dtype is not None:
            check.choice("--dtype", self.dtype, DTYPES)
        check.choice("--weights", self.weights, WEIGHTS)


def batch_sizes(n: int, b: int) -> list[int]:
    """Sizes of the fixed batches of n examples cut into batches of b."""
    return [b] * (n // b) + ([n % b] if n % b else [])


@dataclass
class AnalysisContext:
    checkpoint: Checkpoint
    model: nn.Module  # on `device` in `dtype`; the checkpoint's own model or a moved copy
    device: torch.device
    data: Data
    x: torch.Tensor  # the fixed evaluation images (uint8, on the device)
    y: torch.Tensor
    spec: EvalSpec
    bn_mode: str  # resolved: "batch", "running" or "none"
    loss_fn: Any = field(repr=False)  # (logits, y) -> mean loss of the batch

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.checkpoint.config

    @property
    def sizes(self) -> list[int]:
        return batch_sizes(len(self.y), self.spec.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed batches, normalised on the fly in the model's dtype (memory O(batch))."""
        for xb, yb in eval_batches(self.x, self.y, self.spec.batch_size, self.data):
            yield xb.to(self.dtype), yb

    @functools.cached_property
    def batch_list(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed batches, materialised once (for analyses that pass over them many times)."""
        return list(self.batches())

    def hessian(self, *, params: Sequence[str] | None = None, loss_scale: str = "mean",
                weight_decay_term: bool | float = False, method: str = "double_backward",
                cache_graphs: bool | str = "auto", block_size: int = 16) -> Any:
        """The HessianOperator of the training loss on this context's batches, with `.settings`.

        weight_decay_term: True adds the run's wd·I (all parameters are decayed, as trained), a float
        adds that coefficient. A shortcut for `bnlab.curvature.source.curvature_operator(self, "hessian", ...)`,
        the factory of every curvature matrix (the package itself calls that; nothing imports upward).
        """
        # Imported here: bnlab.curvature builds on this module (its package imports the context).
        from .curvature.source import curvature_operator

        return curvature_operator(self, "hessian", params=params, loss_scale=loss_scale,
                                  weight_decay_term=weight_decay_term, method=method, cache_graphs=cache_graphs,
                                  block_size=block_size)

    def settings(self) -> dict[str, Any]:
        """Everything that defines what this context evaluates, for the record."""
        cfg, path = self.config, Path(self.checkpoint.path)
        return {
            "checkpoint": str(path), "checkpoint_sha256": _sha256(path),
            "variant": cfg.variant, "model": dataclasses.asdict(cfg.model),
            "data_source": self.data.source, "dataset": cfg.data.dataset, "data_subset": cfg.data.subset,
            "num_samples": len(self.y), "batch_size": self.spec.batch_size, "num_batches": len(self.sizes),
            "eval_seed": self.spec.eval_seed, "bn_mode": self.bn_mode, "augmentation": "none",
            "weights": self.spec.weights,
            "label_smoothing": cfg.label_smoothing, "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "loss": "cross_entropy" + (f"(label_smoothing={cfg.label_smoothing})" if cfg.label_smoothing else ""),
        }


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return file_hash(path)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    st = path.stat()
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


def build_context(ckpt: Checkpoint | str | os.PathLike, spec: EvalSpec | None = None, *,
                  device: str | torch.device | None = None, data: Data | None = None) -> AnalysisContext:
    """The analysis context of `ckpt` (a loaded Checkpoint, or a path to load) for `spec`.

    data: an already loaded Data to reuse (must be the run's). Raises BnlabError, before any heavy
    work, for an evaluation set BN's batch mode cannot use (a batch of 1, ghost splits not dividing).
    """
    spec = spec or EvalSpec()
    spec.validate()
    tune_allocator()
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt, dev, weights=spec.weights)
    elif ckpt.meta.get("weights", "raw") != spec.weights:  # loaded with the other weights: load the ones asked for
        ckpt = load_checkpoint(ckpt.path, dev, weights=spec.weights)
    model = ckpt.model
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # derivatives of a non-finite model are meaningless; say so before any work
        raise BnlabError(f"{ckpt.path} has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                         "nothing to analyse")
    want = getattr(torch, spec.dtype) if spec.dtype else next(model.parameters()).dtype
    p0 = next(model.parameters())
    if p0.device != dev or p0.dtype != want:
        model = copy.deepcopy(model).to(device=dev, dtype=want)  # the caller's model stays as it was
    mode = resolve_bn_mode(model, spec.bn_mode)
    data_spec = ckpt.config.data if spec.data_dir is None else dataclasses.replace(ckpt.config.data,
                                                                                   data_dir=str(spec.data_dir))
    if data is None:
        data = load_data(data_spec, dev, seed=ckpt.config.seed)
    x, y = eval_set(data, spec.num_samples, seed=spec.eval_seed)
    sizes = batch_sizes(len(y), spec.batch_size)
    if mode == "batch":
        for s in {m.splits for m in model.modules() if isinstance(m, GhostBatchNorm)}:
            if any(n % s for n in sizes):
                raise BnlabError(f"ghost BN with {s} splits needs every batch divisible by {s}: choose --batch-size "
                                 f"and --num-samples as multiples of {s} (batches here: {sorted(set(sizes))})")
        if min(sizes) < 2:
            raise BnlabError("BN in batch mode needs batches of at least 2 examples; change --num-samples")
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=ckpt.config.label_smoothing)
    return AnalysisContext(checkpoint=ckpt, model=model, device=dev, data=data, x=x, y=y, spec=spec,
                           bn_mode=mode, loss_fn=loss_fn)
