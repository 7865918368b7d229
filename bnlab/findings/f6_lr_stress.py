"""F6, the LR stress test: where the BN and the no-BN nets fail under an exponentially growing lr (their
metrics.csv and status.json)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .common import P7, read_csv_rows
from .posts import PostNumber
from .record import Finding, FindingRecord, decide, finite, fmt, num

F6_RATIO = 10.0
F6_CHANCE = 0.15
F6_LEARNED = 0.3

SPEC = Finding(
    "F6", "batch-norm", "LR stress test",
    "With an exponentially growing lr (lr0 2^(epoch/2)) the net without BN fails far earlier than the "
    "net with BN.",
    P7, "no BN: NaN at lr 0.32 (epoch 12); BN: stable up to lr ~29 (end of the test)",
    f"lr at failure BN / no BN >= {num(F6_RATIO)}, or BN never fails (while no BN does); failure = a non-finite "
    f"loss, or an epoch's training accuracy back at <= {num(F6_CHANCE)} after it had exceeded {num(F6_LEARNED)}")


def failure_point(metrics: Sequence[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """Where an LR stress run failed: a non-finite loss (the trainer's `diverged` record), or the first epoch
    whose training accuracy is back at chance (<= 0.15) after an earlier epoch exceeded 0.3. The lr is the
    divergence step's, or that epoch's last step's."""
    diverged = status.get("diverged") if status.get("status") == "diverged" else None
    learned = False
    collapse = None
    for row in metrics:
        acc = row.get("train_acc")
        if not finite(acc):
            continue
        if learned and acc <= F6_CHANCE and collapse is None:
            collapse = {"epoch": row["epoch"], "lr": row["lr"], "train_acc": acc}
        learned = learned or acc > F6_LEARNED
    nonfinite = None if diverged is None else {"epoch": diverged.get("epoch"), "lr": diverged.get("lr"),
                                               "step": diverged.get("step"), "reason": diverged.get("reason")}
    events = [e for e in (collapse, nonfinite) if e is not None]
    first = min(events, key=lambda e: e["epoch"]) if events else None
    last_lr = metrics[-1]["lr"] if metrics else None
    return {"failed": first is not None, "lr": None if first is None else first["lr"],
            "how": None if first is None else ("non-finite loss" if first is nonfinite else "accuracy collapse"),
            "nonfinite": nonfinite, "accuracy_collapse": collapse, "last_lr": last_lr,
            "epochs": len(metrics), "max_train_acc": max((r["train_acc"] for r in metrics
                                                          if finite(r.get("train_acc"))), default=None)}


def f6_lr_stress(bn: dict[str, Any], no_bn: dict[str, Any]) -> FindingRecord:
    """F6: `failure_point` of the BN and the no-BN stress runs."""
    ratio = bn["lr"] / no_bn["lr"] if bn["failed"] and no_bn["failed"] else None
    nf = (bn["nonfinite"]["lr"] / no_bn["nonfinite"]["lr"] if bn.get("nonfinite") and no_bn.get("nonfinite")
          else None)
    checks = [("no BN fails within the test", no_bn["failed"]),
              (f"BN never fails, or fails at >= {F6_RATIO:g}x no BN's lr",
               no_bn["failed"] and (not bn["failed"] or (ratio is not None and ratio >= F6_RATIO)))]

    def where(r: dict[str, Any]) -> str:
        return (f"fails at lr {fmt(r['lr'], '.3g')} ({r['how']})" if r["failed"]
                else f"never fails (last lr {fmt(r['last_lr'], '.3g')})")

    measured = f"BN {where(bn)}; no BN {where(no_bn)}" + (f"; ratio {ratio:.1f}x" if ratio else "")
    values = {"bn": bn, "no_bn": no_bn, "ratio": ratio, "ratio_nonfinite_only": nf}
    return decide(SPEC, checks, measured, values)


def _stress(out: Path) -> dict[str, Any]:
    metrics = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in read_csv_rows(out / "metrics.csv")]
    return failure_point(metrics, read_json(out / "status.json"))


def load(outs: Outs) -> dict[str, Any]:
    return {"bn": _stress(outs["train_stress_bn"]), "no_bn": _stress(outs["train_stress_no_bn"])}


def figure(f: Any) -> Any:
    """Training accuracy of each epoch against its lr, with where each run failed."""
    import pandas as pd

    from ..plotting import panels, style

    fig, (ax,) = panels.panel(f, 10, 4.6)
    for (stage, label), color in zip((("train_stress_bn", "BN"), ("train_stress_no_bn", "no BN")), style.colors(2)):
        m = pd.read_csv(f.out(stage) / "metrics.csv")
        ax.plot(m["lr"], m["train_acc"], "o-", ms=4, color=color, label=label)
        fp = f.values["bn" if label == "BN" else "no_bn"]
        if fp["failed"]:
            ax.axvline(fp["lr"], color=color, ls="--", lw=1.2,
                       label=f"{label} fails at lr {fp['lr']:.3g} ({fp['how']})")
    ax.axhline(F6_CHANCE, color="grey", ls=":", lw=1.2, label=f"chance level + 5% ({num(F6_CHANCE)})")
    ax.set(xscale="log", xlabel="lr at the end of the epoch", ylabel="training accuracy of the epoch",
           title="LR stress test: lr0 · 2^(epoch/2)")
    style.plain_log_ticks(ax, "x")
    style.legend_outside(ax, fontsize=8)
    return fig


def _failure_lr(run: dict[str, Any]) -> float | None:
    return run["lr"] if run["failed"] else run["last_lr"]


_FAILS = "lr where the LR stress test fails (never failing: its last lr)"
POSTS = (PostNumber(_FAILS, "BN", 29.0, "stable up to ~29 (the test's end)", lambda v: _failure_lr(v["bn"])),
         PostNumber(_FAILS, "no BN", 0.32, "NaN at 0.32 (epoch 12)", lambda v: _failure_lr(v["no_bn"])))

FINDING = FindingDef(SPEC, ("train_stress_bn", "train_stress_no_bn"), load, f6_lr_stress, figure, posts=POSTS)
