"""What several findings share: the post sources, the three models of the batch-norm post, and the readers
of the stage files more than one finding loads."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..io.jsonfile import read_json
from .base import Outs

P6 = "P: How to train your ResNet 6 (weight decay)"
P7 = "P: How to train your ResNet 7 (batch norm) and its notebook"
MODELS = ("bn", "frozen", "no_bn")  # the batch-norm post's three simple nets


def bn_preceded_convs(config: dict[str, Any]) -> list[str]:
    """Names of the conv weights that a batch-statistics BN follows directly, in the run's model."""
    from ..config import TrainConfig
    from ..models import build_model
    from ..norms import batch_norm_layers

    model = build_model(TrainConfig.from_dict(config).model)
    bn_modules = {id(m) for _, m in batch_norm_layers(model)}
    names = []
    for prefix, block in model.named_modules():
        conv, norm = getattr(block, "conv", None), getattr(block, "norm", None)
        if conv is not None and id(norm) in bn_modules:
            names.append(f"{prefix}.conv.weight")
    return names


def main_run(outs: Outs) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The weight-decay post's main run: its `bnlab dynamics` summary, BN-preceded convs and config."""
    config = read_json(outs["train_wd_main"] / "config.json")
    return read_json(outs["dynamics_wd_main"] / "dynamics_summary.json"), bn_preceded_convs(config), config


def three_outstats(outs: Outs) -> dict[str, dict[str, Any]]:
    """outstats.json of the three simple nets."""
    return {m: read_json(outs[f"outstats_{m}"] / "outstats.json") for m in MODELS}


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bn_preceded_rows(layers: list[dict[str, Any]], bn_preceded: list[str]) -> list[dict[str, Any]]:
    """The `bnlab dynamics` summary rows of the BN-preceded convs, in their order."""
    by_name = {r["param"]: r for r in layers}
    return [by_name[p] for p in bn_preceded if p in by_name]
