"""What `bnlab reproduce` computes at each scale: the stages (runs and analyses), their settings, which
stages each finding reads, and an estimate of each stage's cost (for the ETA).

Scales:

- ``smoke``: synthetic images, tiny nets, a few steps: checks that every stage and the report work
  (minutes on a laptop; the test suite runs it). Its verdicts mean nothing.
- ``cpu``: CIFAR-10 subsets, widths 8-16, every finding decided; about 20 minutes on 2 CPU cores (measured 19 min).
- ``full``: the posts' own settings (DavidNet width 64, batch 512, the whole training set; the batch-norm
  post's simple net at width 64 with its schedule); meant for a GPU (``--device cuda``).

Every stage is a pure function of its settings and its inputs' outputs, so a stage's folder is keyed by
the hash of both (`bnlab.reproduce.cache`): a changed setting reruns exactly what depends on it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BnlabError

SCALES = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Stage:
    """One unit of work whose outputs are cached: a training run, an analysis of one, a simulation."""

    name: str
    kind: str  # train | freeze | hessian | outstats | dynamics | series | sweep | collapse | init_shares | exact
    settings: dict[str, Any]
    deps: dict[str, str] = field(default_factory=dict)  # role -> stage name whose outputs this one reads
    cost: float = 1.0  # estimated seconds on one idle CPU core (only the ETA uses it)


# -- cost model (seconds on one idle CPU core; measured on an AMD EPYC core, fp32) ----------------------
_SEC_PER_IMAGE_W16 = {"davidnet": 1 / 400, "simple": 1 / 340}  # one forward+backward at width 16
_HVP_FACTOR = 3.5  # a double-backward HVP against one forward+backward


def _image_cost(model: str, width: int) -> float:
    return _SEC_PER_IMAGE_W16[model] * (width / 16) ** 1.7 + 2e-5


def _train_cost(s: dict[str, Any]) -> float:
    n = s.get("subset") or (s.get("synthetic_train", 5000) if s.get("dataset") == "synthetic" else 50000)
    steps = s["epochs"] * (n // s["batch_size"])
    per = _image_cost(s.get("model", "davidnet"), s["width"])
    log = 1.15 if s.get("log_every", 1) else 1.0
    test = s.get("test_subset") or (s.get("synthetic_test", 1000) if s.get("dataset") == "synthetic" else 10000)
    return steps * s["batch_size"] * per * log + s["epochs"] * test * per / 3 + 3


def _hvps(k: int) -> int:
    return 6 * k + 30 + k  # thick-restart Lanczos to tol 1e-3..1e-4, plus k to verify


def _hessian_cost(model: str, width: int, k: int, samples: int) -> float:
    return _hvps(k) * samples * _HVP_FACTOR * _image_cost(model, width) + 3


# -- the settings of each scale ------------------------------------------------------------------------

def _data(scale: str, subset: int | None, test_subset: int | None, synthetic: tuple[int, int]) -> dict[str, Any]:
    if scale == "smoke":
        return {"dataset": "synthetic", "synthetic_train": synthetic[0], "synthetic_test": synthetic[1]}
    return {"dataset": "cifar10", "subset": subset, "test_subset": test_subset}


SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        # DavidNet, constant lr: F1-F3 (dynamics) and F12 (curvature series)
        "wd_main": dict(width=4, batch_size=32, epochs=6, lr=0.2, weight_decay=5e-3, save_every=3,
                        **_data("smoke", None, None, (256, 100))),
        "eos": None,  # F12 reads the F1-F3 run's checkpoints
        "eos_series": dict(top_k=2, num_samples=40, batch_size=20, tol=1e-2),
        "sweep": dict(base=dict(width=2, batch_size=32, epochs=3, **_data("smoke", None, None, (256, 100))),
                      grid="lr=0.2,0.4 wd=2.5e-3,5e-3"),
        "stress": dict(width=2, batch_size=32, epochs=6, lr=0.05, **_data("smoke", None, None, (256, 100))),
        "bn_post": dict(width=2, epochs=3, batch_size=32, lr_scale=0.25, **_data("smoke", None, None, (320, 100))),
        "bn_eval": dict(num_samples=40, batch_size=20, top_k=3, frozen_top_k=5, residual_top_k=2, tol=1e-2),
        "collapse": dict(depth=50, width=64, n_inputs=100),
        "init_shares": dict(width=2, num_samples=40, batch_size=20, **_data("smoke", None, None, (256, 100))),
        "exact": dict(width=2, images=64, batch_size=8, pythagoras_steps=10, exp_steps=40),
    },
    "cpu": {
        # lr*wd = 2.5e-4 -> relaxation time 0.1/(4 * 2.5e-4) = 100 steps; 2000 steps = 20 of them.
        "wd_main": dict(width=16, batch_size=32, epochs=20, lr=0.05, weight_decay=5e-3, save_every=2,
                        **_data("cpu", 3200, 1000, (0, 0))),
        # F12: DavidNet at the recipe's peak lr and batch (the largest stable lr of part 5's search), constant,
        # on a subset; the Hessian on fixed batches of the training batch size.
        "eos": dict(width=8, batch_size=512, epochs=64, lr=0.4, weight_decay=5e-4, save_every=8,
                    **_data("cpu", 5120, 1000, (0, 0))),
        "eos_series": dict(top_k=2, num_samples=1020, batch_size=510, tol=1e-3),
        # lr*wd from 2.5e-4 to 1e-3, 1000 steps each; two points at lr*wd = 5e-4; lr/wd from 5 to 20.
        "sweep": dict(base=dict(width=8, batch_size=64, epochs=20, **_data("cpu", 3200, 1000, (0, 0))),
                      grid="lr=0.05,0.1 wd=5e-3,1e-2"),
        "stress": dict(width=8, batch_size=128, epochs=25, lr=0.005, **_data("cpu", 5120, 1000, (0, 0))),
        # the post's schedule compressed onto fewer, smaller batches: lr scaled with the batch (128/512)
        "bn_post": dict(width=8, epochs=10, batch_size=128, lr_scale=0.25, **_data("cpu", 5000, 1000, (0, 0))),
        "bn_eval": dict(num_samples=640, batch_size=256, top_k=12, frozen_top_k=12, residual_top_k=2, tol=1e-3),
        "collapse": dict(depth=50, width=2048, n_inputs=1000),
        "init_shares": dict(width=8, num_samples=640, batch_size=256, **_data("cpu", 3200, 1000, (0, 0))),
        "exact": dict(width=4, images=128, batch_size=16, pythagoras_steps=100, exp_steps=200),
    },
    "full": {
        # The post's DavidNet at constant lr (F2 needs one): lr*wd = 2e-4 -> 125 steps; 2328 steps = 18.6 of them.
        "wd_main": dict(width=64, batch_size=512, epochs=24, lr=0.4, weight_decay=5e-4, save_every=2, log_every=4,
                        **_data("full", None, None, (0, 0))),
        "eos": None,  # the F1-F3 run is the recipe's DavidNet at constant lr already
        "eos_series": dict(top_k=4, num_samples=5120, batch_size=512, tol=1e-3),
        "sweep": dict(base=dict(width=64, batch_size=512, epochs=24, log_every=4, **_data("full", None, None, (0, 0))),
                      grid="lr=0.2,0.4 wd=2.5e-4,5e-4"),
        "stress": dict(width=64, batch_size=512, epochs=25, lr=0.005, **_data("full", None, None, (0, 0))),
        "bn_post": dict(width=64, epochs=10, batch_size=512, lr_scale=1.0, **_data("full", None, None, (0, 0))),
        # the post: Hessian over 80 batches of 256, scipy eigsh k = 25
        "bn_eval": dict(num_samples=20480, batch_size=256, top_k=20, frozen_top_k=20, residual_top_k=2, tol=1e-4),
        "collapse": dict(depth=50, width=2048, n_inputs=1000),
        "init_shares": dict(width=64, num_samples=1280, batch_size=256, **_data("full", None, None, (0, 0))),
        "exact": dict(width=4, images=128, batch_size=16, pythagoras_steps=100, exp_steps=200),
    },
}


def build_plan(scale: str) -> dict[str, Stage]:
    """Every stage of `scale`, by name (a DAG: deps name earlier stages)."""
    if scale not in SETTINGS:
        raise BnlabError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    s = SETTINGS[scale]
    stages: list[Stage] = []

    def add(stage: Stage) -> None:
        stages.append(stage)

    # Weight-decay post: one constant-lr BN DavidNet (F1-F3; F12 where "eos" is None), a sweep (F4), exact
    # simulations (F1, F4b); F12's own run at the largest stable lr where "eos" is set.
    main = dict(s["wd_main"])
    main.update(variant="bn", lr_schedule="const", momentum=0.9, nesterov=True, log_channels=True,
                log_every=main.get("log_every", 1))
    add(Stage("train_wd_main", "train", main, cost=_train_cost(main)))
    add(Stage("dynamics_wd_main", "dynamics", {"channels": True}, {"run": "train_wd_main"},
              cost=5 + 3e-6 * _steps(main) / main["log_every"] * (30 + 35 * main["width"])))
    eos_run = "train_wd_main"
    if s["eos"] is not None:
        eos = dict(s["eos"])
        eos.update(variant="bn", lr_schedule="const", momentum=0.9, nesterov=True, log_every=0)
        add(Stage("train_eos", "train", eos, cost=_train_cost(eos)))
        eos_run = "train_eos"
    ser = s["eos_series"]
    run = next(st.settings for st in stages if st.name == eos_run)
    n_ckpt = run["epochs"] // run["save_every"]
    add(Stage("series_eos", "series", dict(ser), {"run": eos_run},
              cost=n_ckpt * 0.7 * _hessian_cost("davidnet", run["width"], ser["top_k"], ser["num_samples"])))
    sw = s["sweep"]
    base = dict(sw["base"], lr_schedule="const", momentum=0.9, nesterov=True, log_every=sw["base"].get("log_every", 1))
    n_points = math.prod(len(item.split("=")[1].split(",")) for item in sw["grid"].split())
    add(Stage("sweep_wd", "sweep", {"base": base, "grid": sw["grid"], "variant": "bn"},
              cost=n_points * _train_cost({**base, "lr": 0.1}) + 5))
    ex = s["exact"]
    add(Stage("exact_invariant", "exact", dict(ex),
              cost=(3 * ex["exp_steps"] + ex["pythagoras_steps"]) * ex["batch_size"] * 0.005))  # float64: slow kernels

    # Batch-norm post: collapse, LR stress test, and the three simple nets.
    c = s["collapse"]
    add(Stage("collapse_fc", "collapse", dict(c), cost=2 * 2 * c["depth"] * c["width"] ** 2 * c["n_inputs"] / 2e10 + 2))
    ini = dict(s["init_shares"])
    add(Stage("init_shares", "init_shares", ini,
              cost=4 * ini["num_samples"] * _image_cost("davidnet", ini["width"]) + 3))
    st = s["stress"]
    for variant in ("bn", "no_bn"):
        cfg = dict(st, variant=variant, lr_schedule="exp", weight_decay=1e-4, momentum=0.9, nesterov=True,
                   log_every=0)
        add(Stage(f"train_stress_{variant}", "train", cfg, cost=_train_cost(cfg)))
    bp, ev = s["bn_post"], s["bn_eval"]
    f = bp["epochs"] / 10  # the post's [0, 4, 20] schedule, stopped at half-way (epoch 10), compressed in time
    for variant, lr in (("bn", 5.0), ("no_bn", 0.2)):
        cfg = {k: v for k, v in bp.items() if k != "lr_scale"}
        cfg.update(variant=variant, model="simple", act="softplus", cutout=0, lr=lr * bp["lr_scale"],
                   lr_knots=[0.0, 4 * f, 20 * f], lr_mults=[0.0, 1.0, 0.0], weight_decay=1e-4, momentum=0.9,
                   nesterov=True, log_every=0)
        add(Stage(f"train_simple_{variant}", "train", cfg, cost=_train_cost(cfg)))
    add(Stage("freeze_simple_bn", "freeze", {}, {"run": "train_simple_bn"},
              cost=(bp.get("subset") or 50000) * _image_cost("simple", bp["width"]) / 3 + 3))
    ckpt_of = {"bn": ("train_simple_bn", "run"), "frozen": ("freeze_simple_bn", "frozen"),
               "no_bn": ("train_simple_no_bn", "run")}
    for m, (src, role) in ckpt_of.items():
        k = ev["frozen_top_k"] if m == "frozen" else ev["top_k"]
        evs = {"num_samples": ev["num_samples"], "batch_size": ev["batch_size"]}
        add(Stage(f"hessian_{m}", "hessian", {**evs, "top_k": k, "tol": ev["tol"], "loss_scale": "batch-sum"},
                  {role: src}, cost=_hessian_cost("simple", bp["width"], k, ev["num_samples"])))
        add(Stage(f"outstats_{m}", "outstats", {**evs, "tol": ev["tol"], "loss_scale": "batch-sum", "project": True},
                  {role: src, "hessian": f"hessian_{m}"},
                  cost=_hessian_cost("simple", bp["width"], k, ev["num_samples"])
                  + 40 * ev["num_samples"] * _image_cost("simple", bp["width"])))
        # F13: the Gauss-Newton part and the residual of the same Hessian (same batches, units, tol)
        add(Stage(f"ggn_{m}", "hessian", {**evs, "top_k": k, "tol": ev["tol"], "loss_scale": "batch-sum",
                                          "matrix": "ggn"},
                  {role: src}, cost=_hessian_cost("simple", bp["width"], k, ev["num_samples"])))
        add(Stage(f"residual_{m}", "hessian", {**evs, "top_k": ev["residual_top_k"], "tol": ev["tol"],
                                               "loss_scale": "batch-sum", "matrix": "residual"},
                  {role: src}, cost=2 * _hessian_cost("simple", bp["width"], ev["residual_top_k"], ev["num_samples"])))
    return {st.name: st for st in stages}


def _steps(cfg: dict[str, Any]) -> int:
    n = cfg.get("subset") or (cfg.get("synthetic_train", 5000) if cfg.get("dataset") == "synthetic" else 50000)
    return cfg["epochs"] * (n // cfg["batch_size"])


# Which stages each finding reads (a finding is decided when all of them are done).
FINDING_STAGES: dict[str, tuple[str, ...]] = {
    "F1": ("train_wd_main", "dynamics_wd_main", "exact_invariant"),
    "F2": ("train_wd_main", "dynamics_wd_main"),
    "F3": ("train_wd_main", "dynamics_wd_main"),
    "F4": ("sweep_wd",),
    "F4b": ("exact_invariant",),
    "F5": ("collapse_fc", "init_shares"),
    "F6": ("train_stress_bn", "train_stress_no_bn"),
    "F7": ("outstats_bn", "outstats_frozen", "outstats_no_bn"),
    "F8": ("outstats_bn", "outstats_frozen", "outstats_no_bn"),
    "F9": ("hessian_bn", "hessian_frozen", "hessian_no_bn"),
    "F10": ("outstats_frozen",),
    "F11": ("outstats_bn", "outstats_frozen", "outstats_no_bn"),
    "F12": ("series_eos",),
    "F13": tuple(f"{kind}_{m}" for m in ("bn", "frozen", "no_bn") for kind in ("hessian", "ggn", "residual"))
    + ("outstats_frozen",),
}


def with_deps(plan: dict[str, Stage], names: Iterable[str]) -> list[str]:
    """`names` with every stage they depend on, in a valid run order (dependencies first)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in plan[name].deps.values():
            visit(dep)
        order.append(name)

    for name in names:
        visit(name)
    return order


def needed_stages(plan: dict[str, Stage], findings: tuple[str, ...]) -> list[str]:
    """The stages the findings read, with everything they depend on, in a valid run order."""
    return with_deps(plan, (name for fid in findings for name in FINDING_STAGES[fid]))
