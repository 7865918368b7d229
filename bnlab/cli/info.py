"""`bnlab info CKPT`: what a checkpoint holds."""
from __future__ import annotations

import json

import click

from ..checkpoint import load_checkpoint
from ..models import count_parameters


@click.command("info")
@click.argument("ckpt", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(ckpt: str, as_json: bool) -> None:
    """Summarise a checkpoint: variant, model, progress, metrics, versions."""
    c = load_checkpoint(ckpt)
    cfg, meta = c.config, c.meta
    last = (meta.get("metrics") or [{}])[-1]
    summary = {
        "path": str(c.path), "variant": cfg.variant, "model": cfg.model.model, "width": cfg.model.width,
        "norm": cfg.model.norm, "act": cfg.model.act, "parameters": count_parameters(c.model),
        "epoch": meta.get("epoch"), "epochs": cfg.epochs, "step": meta.get("step"), "status": meta.get("status"),
        "diverged": meta.get("diverged"), "test_acc": last.get("test_acc"), "train_loss": last.get("train_loss"),
        "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "dataset": cfg.data.dataset, "subset": cfg.data.subset,
        "frozen": meta.get("frozen"), "versions": meta.get("versions"),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for k, v in summary.items():
        if v is not None:
            click.echo(f"{k:>14}: {v}")
