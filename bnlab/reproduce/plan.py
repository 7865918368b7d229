"""What `bnlab reproduce` computes at each scale: the stages (runs and analyses), their settings, which
stages run in which order. Which stages each finding reads is the finding's own (`bnlab.findings.registry`,
re-exported here as FINDING_STAGES); what a stage kind does and costs is its class's (`bnlab.reproduce.kinds`).

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

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BnlabError
from ..findings.registry import BY_ID, FINDING_STAGES  # noqa: F401 (FINDING_STAGES: a view)
from ..options import load, opt
from .kinds import kind

SCALES = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Stage:
    """One unit of work whose outputs are cached: a training run, an analysis of one, a simulation."""

    name: str
    kind: str  # a name in bnlab.reproduce.kinds.KINDS: train, freeze, hessian, outstats, dynamics, series, ...
    settings: dict[str, Any]
    deps: dict[str, str] = field(default_factory=dict)  # role -> stage name whose outputs this one reads
    cost: float = 1.0  # estimated seconds on one idle CPU core (only the ETA uses it)


# -- the settings of each scale ------------------------------------------------------------------------

def _data(scale: str, subset: int | None, test_subset: int | None, synthetic: tuple[int, int]) -> dict[str, Any]:
    if scale == "smoke":
        return {"dataset": "synthetic", "synthetic_train": synthetic[0], "synthetic_test": synthetic[1]}
    return {"dataset": "cifar10", "subset": subset, "test_subset": test_subset}


POST_SAMPLES = 80 * 256  # the batch-norm post's Hessian sample; below it, lambda1 is also taken on two halves
MODELS = ("bn", "frozen", "no_bn")


def _eigenpairs(frozen: int = 12, hessian: int = 10, ggn: int = 10) -> dict[str, dict[str, int]]:
    """Per finding, the eigenpairs it reads of each curvature stage; a stage computes the most any finding asks
    (`eigenpair_budget`). F9: lambda1 of every model and the frozen gap at k = 8..11 (top 12); F10: v1..v9 of the
    frozen net; F11: lambda1 of each projected Hessian (the outstats stages' `project_k`); F13: the top-10 spaces
    of H and G, R's lambda1, and BN's H gap at k = 8..11 (its top 12)."""
    return {"F9": {"hessian_bn": 1, "hessian_frozen": frozen, "hessian_no_bn": 1},
            "F10": {"hessian_frozen": min(9, frozen)},
            "F11": {f"projected_{m}": 1 for m in MODELS},
            "F13": {**{f"hessian_{m}": hessian for m in MODELS}, "hessian_bn": max(hessian, frozen),
                    **{f"ggn_{m}": ggn for m in MODELS}, **{f"residual_{m}": 1 for m in MODELS}}}


def eigenpair_budget(scale: str) -> dict[str, dict[str, Any]]:
    """Per curvature stage (projected_M: the projected Hessian of outstats_M), the eigenpairs it computes and
    which findings read how many."""
    k = SETTINGS[scale]["eos_series"]["top_k"]  # F12's series: lambda1 and a few more, warm-started (k <= 4)
    return dict(sorted({**eigenpair_budget_of(SETTINGS[scale]["bn_eval"]["eigenpairs"]),
                        "series_eos": {"k": k, "for": {"F12": k}}}.items()))


def eigenpair_budget_of(eigenpairs: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for fid, needs in eigenpairs.items():
        for stage, k in needs.items():
            entry = out.setdefault(stage, {"k": 0, "for": {}})
            entry["k"] = max(entry["k"], k)
            entry["for"][fid] = k
    return dict(sorted(out.items()))


SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        # DavidNet, constant lr: F1-F3 (dynamics) and F12 (curvature series)
        "wd_main": dict(width=4, batch_size=32, epochs=6, lr=0.2, weight_decay=5e-3, save_every=3, log_grad_lags=8,
                        **_data("smoke", None, None, (256, 100))),
        "eos": None,  # F12 reads the F1-F3 run's checkpoints
        "eos_series": dict(top_k=2, num_samples=40, batch_size=20, tol=1e-2),
        "sweep": dict(base=dict(width=2, batch_size=32, epochs=3, **_data("smoke", None, None, (256, 100))),
                      grid="lr=0.2,0.4 wd=2.5e-3,5e-3"),
        "stress": dict(width=2, batch_size=32, epochs=6, lr=0.05, **_data("smoke", None, None, (256, 100))),
        "bn_post": dict(width=2, epochs=3, batch_size=32, lr_scale=0.25, **_data("smoke", None, None, (320, 100))),
        "bn_eval": dict(num_samples=40, batch_size=20, tol=1e-2, eigenpairs=_eigenpairs(frozen=5, hessian=3, ggn=3)),
        "collapse": dict(depth=50, width=64, n_inputs=100),
        "init_shares": dict(width=2, num_samples=40, batch_size=20, **_data("smoke", None, None, (256, 100))),
        "exact": dict(width=2, images=64, batch_size=8, pythagoras_steps=10, exp_steps=40),
    },
    "cpu": {
        # lr*wd = 2.5e-4 -> relaxation time 0.1/(4 * 2.5e-4) = 100 steps; 2000 steps = 20 of them.
        # log_grad_lags: the gradients' autocorrelation, which F2's note turns into the correlated prediction
        "wd_main": dict(width=16, batch_size=32, epochs=20, lr=0.05, weight_decay=5e-3, save_every=2, log_grad_lags=8,
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
        "bn_eval": dict(num_samples=640, batch_size=256, tol=1e-3, eigenpairs=_eigenpairs()),
        "collapse": dict(depth=50, width=2048, n_inputs=1000),
        "init_shares": dict(width=8, num_samples=640, batch_size=256, **_data("cpu", 3200, 1000, (0, 0))),
        "exact": dict(width=4, images=128, batch_size=16, pythagoras_steps=100, exp_steps=200),
    },
    "full": {
        # The post's DavidNet at constant lr (F2 needs one): lr*wd = 2e-4 -> 125 steps; 2328 steps = 18.6 of them.
        "wd_main": dict(width=64, batch_size=512, epochs=24, lr=0.4, weight_decay=5e-4, save_every=2, log_every=4,
                        log_grad_lags=8,
                        **_data("full", None, None, (0, 0))),
        "eos": None,  # the F1-F3 run is the recipe's DavidNet at constant lr already
        "eos_series": dict(top_k=4, num_samples=5120, batch_size=512, tol=1e-3),
        "sweep": dict(base=dict(width=64, batch_size=512, epochs=24, log_every=4, **_data("full", None, None, (0, 0))),
                      grid="lr=0.2,0.4 wd=2.5e-4,5e-4"),
        "stress": dict(width=64, batch_size=512, epochs=25, lr=0.005, **_data("full", None, None, (0, 0))),
        "bn_post": dict(width=64, epochs=10, batch_size=512, lr_scale=1.0, **_data("full", None, None, (0, 0))),
        # the post: Hessian over 80 batches of 256 (scipy eigsh k = 25; we compute what the findings read)
        "bn_eval": dict(num_samples=20480, batch_size=256, tol=1e-4, eigenpairs=_eigenpairs()),
        "collapse": dict(depth=50, width=2048, n_inputs=1000),
        "init_shares": dict(width=64, num_samples=1280, batch_size=256, **_data("full", None, None, (0, 0))),
        "exact": dict(width=4, images=128, batch_size=16, pythagoras_steps=100, exp_steps=200),
    },
}


# -- what a scale's settings are: the entries the plan reads, each a stage's settings or read by name -----------

@dataclass(frozen=True)
class SweepEntry:
    base: dict[str, Any] = opt(help="make_config's flat options of every point (a train stage's settings).")
    grid: str = opt(help="The --grid spec of the points, e.g. \"lr=0.2,0.4 wd=2.5e-4,5e-4\".")


@dataclass(frozen=True)
class BnEvalEntry:
    num_samples: int = opt(help="The curvature stages' evaluation set.", unit="images", domain="multiple of 10")
    batch_size: int = opt(help="Its fixed batches.", unit="images per batch", domain=">= 1")
    tol: float = opt(help="Lanczos tolerance of every curvature stage.", domain="(0, 1)")
    eigenpairs: dict[str, dict[str, int]] = opt(help="Per finding, the eigenpairs it reads of each curvature stage "
                                                "(`_eigenpairs`).", unit="eigenpairs")


@dataclass(frozen=True)
class ScaleSettings:
    """`SETTINGS[scale]`: each entry the settings of the stages of that name (their kinds type and check their
    keys), the sweep's and the batch-norm post's evaluation set as the plan reads them."""

    wd_main: dict[str, Any] = opt(help="The constant-lr BN DavidNet of F1-F3 (train options).")
    eos: dict[str, Any] | None = opt(help="F12's own run (train options); None: F12 reads wd_main's checkpoints.")
    eos_series: dict[str, Any] = opt(help="F12's curvature series (hessian options).")
    sweep: SweepEntry = opt(help="F4's lr x wd sweep.")
    stress: dict[str, Any] = opt(help="F6's exponential-lr stress runs (train options).")
    bn_post: dict[str, Any] = opt(help="The batch-norm post's simple nets (train options, lr_scale: x the post's lr).")
    bn_eval: BnEvalEntry = opt(help="The curvature stages of F7-F11 and F13.")
    collapse: dict[str, Any] = opt(help="F5's fully connected net at init (collapse options).")
    init_shares: dict[str, Any] = opt(help="F7's channel-mean shares at init.")
    exact: dict[str, Any] = opt(help="The float64 simulations of F1 and F4b.")


def scale_settings(scale: str, settings: dict[str, Any] | None = None) -> ScaleSettings:
    """SETTINGS[scale], typed: a missing, unknown or wrongly typed entry (or key of the sweep's and bn_eval's) is
    refused in one line; the stages' own keys are their kinds' to check (`_Builder.add`)."""
    if scale not in SETTINGS:
        raise BnlabError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    raw = SETTINGS[scale] if settings is None else settings
    return load(ScaleSettings, raw, what=f"scale {scale} settings", unknown="refuse")


class _Builder:
    """Collects the stages of a plan in order; each stage's settings are checked by its kind and its cost comes
    from it, given the settings of the stages it reads and of the training run it analyses."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}

    def add(self, name: str, kind_name: str, settings: dict[str, Any], deps: dict[str, str] | None = None) -> None:
        deps = dict(deps or {})
        k = kind(kind_name)
        k.check(settings, name)  # a bad SETTINGS entry is refused here, naming the stage, before any stage runs
        inputs = {role: self.stages[d].settings for role, d in deps.items()}
        cost = k.cost(settings, inputs, self.run_of(deps))
        self.stages[name] = Stage(name, kind_name, settings, deps, cost=cost)

    def run_of(self, deps: dict[str, str]) -> dict[str, Any] | None:
        """The settings of the training run a stage with these deps analyses (through a freeze)."""
        for role in ("run", "frozen"):
            if role in deps:
                st = self.stages[deps[role]]
                return st.settings if st.kind == "train" else self.run_of(st.deps)
        return None


def build_plan(scale: str, settings: dict[str, Any] | None = None) -> dict[str, Stage]:
    """Every stage of `scale`, by name (a DAG: deps name earlier stages), each stage's settings checked against
    its kind's `settings_type` (BnlabError naming the stage and the field). `settings`: the scale's with some
    replaced (`ReproduceOptions.settings`), default SETTINGS[scale]."""
    s = scale_settings(scale, settings)
    b = _Builder()
    _weight_decay_stages(b, s)
    _batch_norm_stages(b, s)
    return b.stages


_SGD = dict(momentum=0.9, nesterov=True)


def _weight_decay_stages(b: _Builder, s: ScaleSettings) -> None:
    """One constant-lr BN DavidNet (F1-F3; F12 where "eos" is None), a sweep (F4), exact simulations (F1, F4b);
    F12's own run at the largest stable lr where "eos" is set."""
    main = dict(s.wd_main)
    main.update(variant="bn", lr_schedule="const", **_SGD, log_channels=True, log_every=main.get("log_every", 1))
    b.add("train_wd_main", "train", main)
    b.add("dynamics_wd_main", "dynamics", {"channels": True}, {"run": "train_wd_main"})
    eos_run = "train_wd_main"
    if s.eos is not None:
        eos = dict(s.eos)
        eos.update(variant="bn", lr_schedule="const", **_SGD, log_every=0)
        b.add("train_eos", "train", eos)
        eos_run = "train_eos"
    b.add("series_eos", "series", dict(s.eos_series), {"run": eos_run})
    base = dict(s.sweep.base, lr_schedule="const", **_SGD, log_every=s.sweep.base.get("log_every", 1))
    b.add("sweep_wd", "sweep", {"base": base, "grid": s.sweep.grid, "variant": "bn"})
    b.add("exact_invariant", "exact", dict(s.exact))


def _batch_norm_stages(b: _Builder, s: ScaleSettings) -> None:
    """Collapse at init, the LR stress test, and the three simple nets with their curvature analyses."""
    b.add("collapse_fc", "collapse", dict(s.collapse))
    b.add("init_shares", "init_shares", dict(s.init_shares))
    for variant in ("bn", "no_bn"):
        b.add(f"train_stress_{variant}", "train", dict(s.stress, variant=variant, lr_schedule="exp",
                                                        weight_decay=1e-4, **_SGD, log_every=0))
    bp, ev = s.bn_post, s.bn_eval
    f = bp["epochs"] / 10  # the post's [0, 4, 20] schedule, stopped at half-way (epoch 10), compressed in time
    for variant, lr in (("bn", 5.0), ("no_bn", 0.2)):
        cfg = {k: v for k, v in bp.items() if k != "lr_scale"}
        cfg.update(variant=variant, model="simple", act="softplus", cutout=0, lr=lr * bp["lr_scale"],
                   lr_knots=[0.0, 4 * f, 20 * f], lr_mults=[0.0, 1.0, 0.0], weight_decay=1e-4, **_SGD, log_every=0)
        b.add(f"train_simple_{variant}", "train", cfg)
    b.add("freeze_simple_bn", "freeze", {}, {"run": "train_simple_bn"})
    ckpt_of = {"bn": ("train_simple_bn", "run"), "frozen": ("freeze_simple_bn", "frozen"),
               "no_bn": ("train_simple_no_bn", "run")}
    budget = {stage: e["k"] for stage, e in eigenpair_budget_of(ev.eigenpairs).items()}
    for m, (src, role) in ckpt_of.items():
        common = {"num_samples": ev.num_samples, "batch_size": ev.batch_size, "tol": ev.tol,
                  "loss_scale": "batch-sum"}
        b.add(f"hessian_{m}", "hessian", {**common, "top_k": budget[f"hessian_{m}"]}, {role: src})
        b.add(f"outstats_{m}", "outstats", {**common, "project": True, "project_k": budget[f"projected_{m}"]},
              {role: src, "hessian": f"hessian_{m}"})
        # F13: the Gauss-Newton part and the residual of the same Hessian (same batches, units, tol)
        b.add(f"ggn_{m}", "hessian", {**common, "top_k": budget[f"ggn_{m}"], "matrix": "ggn"}, {role: src})
        b.add(f"residual_{m}", "hessian", {**common, "top_k": budget[f"residual_{m}"], "matrix": "residual"},
              {role: src})
        if ev.num_samples < POST_SAMPLES and m in ("bn", "frozen"):  # F9's sample check: lambda1 on two halves
            b.add(f"halves_{m}", "halves", dict(common), {role: src})


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
    return with_deps(plan, (name for fid in findings for name in BY_ID[fid].reads(plan)))
