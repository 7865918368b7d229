"""`bnlab freeze CKPT -o OUT`: the frozen-BN model of the batch-norm post."""
from __future__ import annotations

import click

from ..device import resolve_device
from ..freeze import freeze_checkpoint
from .common import OutPath, data_dir_option, device_option, weights_option


@click.command("freeze")
@click.argument("ckpt", type=click.Path())
@click.option("-o", "--out", required=True, type=OutPath(), help="Output checkpoint file.")
@click.option("--batch-size", type=int, default=None, help="Batch size of the BN refresh (the run's).")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
@weights_option
@data_dir_option
@device_option
def command(ckpt: str, out: str, batch_size: int | None, force: bool, weights: str, data_dir: str | None,
            device: str) -> None:
    """Refresh BN running stats over one pass of the training data, then replace every BN layer by
    its fixed affine map. OUT is a normal checkpoint (variant frozen_bn)."""
    summary = freeze_checkpoint(ckpt, out, data_dir=data_dir, device=resolve_device(device),
                                batch_size=batch_size, force=force, weights=weights)
    click.echo(f"frozen: {out} (BN statistics from {summary['bn_refresh_batches']} batches "
               f"of {summary['bn_refresh_batch_size']}; test acc {summary['test_acc']:.4f})")
