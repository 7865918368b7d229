"""The trainer: DavidNet checkpoints in every variant, with a per-step dynamics log.

`train(config, out_dir)` is the Python API; `bnlab train` is a thin CLI over it. A run directory
holds config.json, status.json, metrics.csv, dynamics.csv (see `bnlab.tracking`), last.pt (every
epoch, for resuming), ckpt_epoch_NNN.pt (every --save-every epochs) and final.pt.

Reproducibility: the model is initialised from the seed; data order and augmentation depend only
on (seed, epoch) (`bnlab.data.train_batches`), and checkpoints are taken at epoch boundaries, so
a resumed run on CPU ends bit-identical to an uninterrupted one.

Divergence (a non-finite loss or gradient) is a result: training stops before the bad update, the
last finite weights are saved as final.pt with status "diverged" and the step/lr recorded.
"""
from __future__ import annotations

import csv
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Data, eval_batches, load_data, train_batches
from .device import resolve_device
from .errors import BnlabError
from .models import build_model
from .norms import calibrate_frozen_norms
from .progress import Progress
from .rundir import prepare_out_dir
from .schedule import lr_at
from .tracking import DynamicsTracker, truncate_csv

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                  "train_time", "eval_time", "img_per_s")


@dataclass
class RunResult:
    status: str  # "finished" | "diverged" | "stopped" (stop_after_epoch reached)
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # last epoch's row
    diverged: dict[str, Any] | None = None


def _autocast(config: TrainConfig, device: torch.device):  # noqa: ANN202
    if device.type == "cuda" and config.amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and config.amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, config: TrainConfig, device: torch.device,
             batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) on the test set, BN in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in eval_batches(data.test_x, data.test_y, batch_size, data):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(config, device):
            out = model(x).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum", label_smoothing=config.label_smoothing)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data.test_y)
    return loss_sum.item() / n, correct.item() / n


def _init_model(config: TrainConfig, data: Data, device: torch.device) -> nn.Module:
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(device)
    if config.model.norm == "frozen":
        # Statistics of (unaugmented) training data at initialisation, fixed for good.
        g = torch.Generator(device=data.device).manual_seed(config.seed)
        n = min(len(data.train_y), max(config.batch_size, 512))
        idx = torch.randperm(len(data.train_y), generator=g, device=data.device)[:n]
        x, _ = next(eval_batches(data.train_x[idx], data.train_y[idx], n, data))
        calibrate_frozen_norms(model, x)
    return model


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, METRIC_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def train(config: TrainConfig, out_dir: str | Path, *, device: str | torch.device = "auto",
          resume: bool = False, force: bool = False, quiet: bool = False,
          stop_after_epoch: int | None = None, data: Data | None = None) -> RunResult:
    """Train `config` into run directory `out_dir` (or continue it with resume=True).

    resume: continue from out_dir/last.pt with the run's own config (the `config` argument is
    ignored then and may be None). stop_after_epoch: return after that epoch as if interrupted
    (the run stays resumable). data: preloaded data to reuse (must match config.data).
    """
    out = Path(out_dir)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    payload = None
    if resume:
        last = out / "last.pt"
        if not last.exists():
            raise BnlabError(f"nothing to resume in {out}: no last.pt (start it without --resume)")
        payload = read_checkpoint(last, map_location="cpu")
        config = TrainConfig.from_dict(payload["config"])
        if payload.get("status") == "diverged":
            raise BnlabError(f"run {out} diverged at step {payload['diverged']['step']}; nothing to resume")
    config.validate()
    if data is None:
        data = load_data(config.data, dev, seed=config.seed)
    if not resume:
        prepare_out_dir(out, force=force, resumable=True)
    model = _init_model(config, data, dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    steps_per_epoch = len(data.train_y) // config.batch_size
    if steps_per_epoch == 0:
        raise BnlabError(f"batch size {config.batch_size} is larger than the training set ({len(data.train_y)})")
    metrics: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"]["torch"])
        start_epoch, step = payload["epoch"], payload["step"]
        metrics = list(payload["metrics"])
        if payload.get("status") == "finished" or start_epoch >= config.epochs:
            return RunResult("finished", out, metrics[-1] if metrics else {})
        for name in ("dynamics.csv", "dynamics_channels.csv"):
            truncate_csv(out / name, step)
    else:
        (out / "config.json").write_text(config.to_json())

    tracker = DynamicsTracker(model, channels=config.log_channels) if config.log_every else None
    params = [p for p in model.parameters() if p.requires_grad]
    base = {"config": config.to_dict(), "seed": config.seed, "device": str(dev)}

    def snapshot(epoch: int, status: str, diverged: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**base, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(),
                "epoch": epoch, "step": step, "metrics": metrics, "status": status, "diverged": diverged}

    diverged = None
    model.train()
    for epoch in range(start_epoch, config.epochs):
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", quiet=quiet)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen = 0
        for x, y in train_batches(data, config.data, config.batch_size, config.seed, epoch):
            frac = epoch + (step - epoch * steps_per_epoch + 1) / steps_per_epoch
            lr = lr_at(config, frac)
            for group in opt.param_groups:
                group["lr"] = lr
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(config, dev):
                out_logits = model(x).float()
            loss = F.cross_entropy(out_logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            gsum = torch.stack(torch._foreach_norm([p.grad for p in params])).sum()
            if not bool(torch.isfinite(loss.detach() + gsum)):  # one host sync per step
                diverged = {"step": step + 1, "epoch": frac, "lr": lr, "loss": float(loss.detach())}
                break
            log = tracker is not None and (step + 1) % config.log_every == 0
            if log:
                tracker.before_step()
            opt.step()
            step += 1
            with torch.no_grad():
                acc = (out_logits.argmax(1) == y).float().mean()
                loss_sum += loss.detach() * len(y)
                correct += acc * len(y)
            seen += len(y)
            if log:
                tracker.after_step(step, frac, lr, loss, acc)
            if not quiet:
                dt = time.perf_counter() - t0
                bar.update(1, f"loss {loss.item():.3f} acc {acc.item():.3f} {seen / dt:.0f} img/s lr {lr:.4g}")
        train_time = time.perf_counter() - t0
        bar.close()
        t1 = time.perf_counter()
        test_loss, test_acc = evaluate(model, data, config, dev)
        eval_time = time.perf_counter() - t1
        row = {"epoch": epoch + 1, "step": step, "lr": lr,
               "train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
               "test_loss": test_loss, "test_acc": test_acc, "train_time": round(train_time, 3),
               "eval_time": round(eval_time, 3), "img_per_s": round(seen / max(train_time, 1e-9), 1)}
        metrics.append(row)
        if tracker is not None:
            tracker.flush(out / "dynamics.csv", out / "dynamics_channels.csv")
        _write_metrics(out / "metrics.csv", metrics)
        if not quiet:
            print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                  f"test loss {test_loss:.4f} acc {test_acc:.4f} | {train_time:.1f}s train "
                  f"{eval_time:.1f}s eval", flush=True)
        if diverged is not None:
            save_checkpoint(out / "final.pt", snapshot(epoch, "diverged", diverged))
            save_checkpoint(out / "last.pt", snapshot(epoch, "diverged", diverged))
            _write_json(out / "status.json", {"status": "diverged", "epoch": epoch, "step": step,
                                               "diverged": diverged})
            if not quiet:
                print(f"diverged at step {diverged['step']} (epoch {diverged['epoch']:.2f}, lr {lr:.4g}): "
                      "non-finite loss; last finite weights saved to final.pt", flush=True)
            return RunResult("diverged", out, row, diverged)
        status = "finished" if epoch + 1 == config.epochs else "running"
        snap = snapshot(epoch + 1, status)
        save_checkpoint(out / "last.pt", snap)
        if config.save_every and (epoch + 1) % config.save_every == 0:
            save_checkpoint(out / f"ckpt_epoch_{epoch + 1:03d}.pt", snap)
        if status == "finished":
            save_checkpoint(out / "final.pt", snap)
        _write_json(out / "status.json", {"status": status, "epoch": epoch + 1, "step": step,
                                           "total_train_time": sum(m["train_time"] for m in metrics),
                                           "total_eval_time": sum(m["eval_time"] for m in metrics)})
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and status != "finished":
            return RunResult("stopped", out, row)
    return RunResult("finished", out, metrics[-1] if metrics else {})

