"""F4b, exponential lr = weight decay: the direction difference between SGD(eta, lambda) and the
exponential-lr run without decay, from the float64 simulation of `bnlab.dynamics.exact`."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .record import Finding, FindingRecord, decide, finite, fmt, num

F4B_DIRECTION_TOL = 1e-6
F4B_STEPS = 200

SPEC = Finding(
    "F4b", "weight-decay", "exponential lr = weight decay",
    "With every parameter scale-invariant, SGD(eta, lambda) and SGD with lr eta (1 - eta lambda)^(-2t-1) "
    "and no weight decay follow the same directions w/‖w‖.",
    "L (Li & Arora 2019)", "exact equivalence (no number)",
    f"float64, mu = 0, {F4B_STEPS} steps: per-tensor directions equal to {num(F4B_DIRECTION_TOL)}")


def f4b_exponential_lr(sim: dict[str, Any]) -> FindingRecord:
    """F4b: max per-tensor direction difference between SGD(eta, lambda) and the exponential-lr run without
    decay (`bnlab.dynamics.exact.exp_lr_equivalence`); the constant-lr run without decay is the control."""
    diff = sim.get("max_direction_diff")
    control = sim.get("control_max_direction_diff")
    checks = [(f"max direction difference {fmt(diff, '.1e')} <= {F4B_DIRECTION_TOL:g}",
               finite(diff) and diff <= F4B_DIRECTION_TOL)]
    needs = [(f"float64, mu = 0, >= {F4B_STEPS} steps (ran {sim.get('dtype')}, mu = {sim.get('momentum')}, "
              f"{sim.get('steps')} steps)", sim.get("dtype") == "float64" and sim.get("momentum") == 0
              and (sim.get("steps") or 0) >= F4B_STEPS)]
    measured = (f"max ‖u_wd - u_exp‖ {fmt(diff, '.1e')} over {sim.get('steps')} steps "
                f"(control, constant lr without decay: {fmt(control, '.2g')}); lr grew "
                f"{fmt(sim.get('lr_growth'), '.3g')}x")
    notes = ["The control (same start, constant lr, no weight decay) shows the test can tell the runs apart."]
    return decide(SPEC, checks, measured, dict(sim), notes=notes, needs=needs)


def load(outs: Outs) -> dict[str, Any]:
    return {"sim": read_json(outs["exact_invariant"] / "exact.json")["exp_lr"]}


def figure(f: Any) -> Any:
    """The per-step direction difference of the two runs, and of the control, against the tolerance."""
    from ..plotting import panels, style

    v = f.values
    fig, (ax,) = panels.panel(f, 9, 4.2)
    steps = np.arange(1, len(v["per_step_direction_diff"]) + 1)
    c1, c2 = style.colors(2)
    ax.plot(steps, np.maximum(v["per_step_direction_diff"], 1e-18), color=c1,
            label="SGD(η, λ) vs exponential lr, λ = 0")
    ax.plot(steps, np.maximum(v["per_step_control_diff"], 1e-18), color=c2, label="control: constant lr, λ = 0")
    ax.axhline(F4B_DIRECTION_TOL, color="black", ls="--", label=f"threshold {num(F4B_DIRECTION_TOL)}")
    ax.set(yscale="log", xlabel="step", ylabel="max per-tensor ‖u₁ - u₂‖",
           title=f"float64, μ = 0, {len(steps)} steps (the claim asks for {F4B_STEPS}), lr grows "
                 f"{v['lr_growth']:.3g}x")
    style.legend_outside(ax, fontsize=8)
    return fig


FINDING = FindingDef(SPEC, ("exact_invariant",), load, f4b_exponential_lr, figure)
