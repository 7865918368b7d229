"""`bnlab info CKPT`: what a checkpoint holds, as an aligned summary or as JSON."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import click

from ..checkpoint import Checkpoint, load_checkpoint
from ..models import count_parameters


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def summarise(c: Checkpoint) -> dict[str, Any]:
    """The checkpoint's summary as plain JSON-able data.

    `test_acc`/`test_loss` are the model's own: for a frozen checkpoint (`bnlab freeze`) the frozen
    model's, measured when it was written; the BN model it came from is under `parent`.
    """
    cfg, meta = c.config, c.meta
    metrics = meta.get("metrics") or []
    last = metrics[-1] if metrics else {}
    frozen = meta.get("frozen")
    own = frozen if frozen else last
    parent = None
    if frozen:
        parent = {"path": frozen.get("frozen_from"), "sha256": frozen.get("frozen_from_sha256"),
                  "epoch": last.get("epoch"), "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
                  "bn_refresh_batches": frozen.get("bn_refresh_batches"),
                  "bn_refresh_batch_size": frozen.get("bn_refresh_batch_size")}
    training = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "data", "variant")}
    summary = {
        "path": str(c.path), "status": meta.get("status"), "variant": cfg.variant,
        "test_acc": own.get("test_acc"), "test_loss": own.get("test_loss"),
        "train_loss": last.get("train_loss") if not frozen else None,
        "epoch": meta.get("epoch"), "epochs": cfg.epochs, "step": meta.get("step"),
        "parameters": count_parameters(c.model),
        "model": dataclasses.asdict(cfg.model), "training": training, "data": dataclasses.asdict(cfg.data),
        "parent": parent, "diverged": meta.get("diverged"),
        "device": meta.get("device"), "versions": meta.get("versions"),
    }
    return _finite(summary)


def _num(v: Any, fmt: str = ".4g") -> str:
    return "n/a" if v is None else format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _tricks(m: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """The bag-of-tricks options a run used, in words (configs written before they existed have none)."""
    k = _num(t.get("bias_scale"))
    named = [(m.get("pool_first"), "max-pool before norm"), (m.get("frozen_scales"), "frozen norm scales"),
             (m.get("whiten"), "patch whitening"), (t.get("bias_scale", 1.0) != 1.0, f"bias lr x{k} / wd /{k}"),
             (t.get("ema_momentum", 0.0) > 0, f"EMA {_num(t.get('ema_momentum'))} every {t.get('ema_every')} steps"),
             (t.get("tta"), "TTA (flip)")]
    return [text for on, text in named if on]


def _lines(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of the human-readable summary."""
    m, t, d = s["model"], s["training"], s["data"]
    rows = [("checkpoint", s["path"])]
    status = s["status"] or "unknown"
    if s["diverged"]:
        dv = s["diverged"]
        status += (f" at step {dv.get('step')} (epoch {_num(dv.get('epoch'), '.2f')}, lr {_num(dv.get('lr'))}):"
                   f" {dv.get('reason')}")
    rows.append(("status", status))
    rows.append(("variant", s["variant"]))
    act = m["act"] + (f" ({_num(m['act_param'])})" if m["act_param"] is not None else "")
    affine = "" if m["affine"] is None else f", affine {'on' if m['affine'] else 'off'}"
    rows.append(("model", f"{m['model']} width {m['width']}, norm {m['norm']}{affine}, {act}, "
                          f"{s['parameters']:,} parameters"))
    if s["epoch"] is not None:
        rows.append(("progress", f"{s['epoch']} of {s['epochs']} epochs done, {s['step']} steps"))
    own = "frozen model" if s["parent"] else "this model"
    rows.append(("test acc", f"{_num(s['test_acc'], '.4f')} ({own}; test loss {_num(s['test_loss'])})"))
    p = s["parent"]
    if p:
        rows.append(("parent acc", f"{_num(p['test_acc'], '.4f')} (BN model before freezing, epoch {p['epoch']}; "
                                   f"test loss {_num(p['test_loss'])})"))
        rows.append(("frozen from", f"{p['path']} (sha256 {str(p['sha256'])[:12]}, BN statistics from "
                                    f"{p['bn_refresh_batches']} batches of {p['bn_refresh_batch_size']})"))
    elif s["train_loss"] is not None:
        rows.append(("train loss", _num(s["train_loss"])))
    sched = f"lr {_num(t['lr'])} {t['lr_schedule']}"
    if t["lr_schedule"] == "piecewise" and t.get("lr_knots") is not None:
        pts = ", ".join(f"{_num(k)}:{_num(x)}" for k, x in zip(t["lr_knots"], t["lr_mults"]))
        sched += f" (epoch:multiple {pts})"
    nesterov = " Nesterov" if t["nesterov"] else ""
    rows.append(("training", f"{sched}; wd {_num(t['weight_decay'])}, momentum {_num(t['momentum'])}{nesterov}, "
                             f"batch {t['batch_size']}, seed {t['seed']}"))
    tricks = _tricks(m, t)
    if tricks or t.get("recipe"):
        rows.append(("tricks", (f"recipe {t['recipe']}: " if t.get("recipe") else "") + (", ".join(tricks) or "none")))
    aug = [n for n, on in (("crop", d["crop"]), ("flip", d["flip"])) if on]
    if d["cutout"]:
        aug.append(f"cutout {d['cutout']}")
    sizes = "".join(f", {label} {d[k]}" for k, label in (("subset", "subset"), ("test_subset", "test subset"))
                    if d[k] is not None)
    rows.append(("data", f"{d['dataset']}{sizes}; augmentation {' + '.join(aug) or 'none'}"))
    if s["device"]:
        rows.append(("device", s["device"]))
    if s["versions"]:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in s["versions"].items())))
    return rows


@click.command("info")
@click.argument("ckpt", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (nested, strictly valid).")
def command(ckpt: str, as_json: bool) -> None:
    """Summarise a checkpoint: status, model, accuracy, training settings, data, versions."""
    s = summarise(load_checkpoint(ckpt))
    if as_json:
        click.echo(json.dumps(s, indent=2, allow_nan=False))
        return
    rows = _lines(s)
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        click.echo(f"{label:>{width}}: {text}")
