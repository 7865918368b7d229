"""Per-layer spherical dynamics of a run, measured from its log and compared with `bnlab.theory`.

For every logged parameter tensor: is it scale-invariant (detected, `invariance`), its norm over
training, its measured angular update per step (and ``rel_step``) against the predicted equilibrium
at the current lr and against the lagged prediction under the run's lr schedule, their ratio, and
how long it took to get there. Averages of angles are root-mean-squares (the theory balances
theta^2), over the *final window* (last `window` fraction of the logged steps).

Which prediction a run is compared with (`Report.compare_to`, the ``ratio`` everywhere): the
equilibrium at the current lr for a constant lr; the lagged prediction under a piecewise or exp
schedule, where the norms trail the moving equilibrium by about a relaxation time (and a schedule
ending at lr 0 has no equilibrium at all). A run shorter than `MIN_RELAXATION_TIMES` relaxation
times gets a warning (`Report.warnings`): its norms are still relaxing.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import theory
from ..config import TrainConfig
from ..errors import BnlabError
from .invariance import DEFAULT_COS_TOL, cos_stats
from .log import RunLog, Table, read_run

EQUILIBRIUM, LAGGED = "equilibrium", "lagged"
# Fewer relaxation times than this and the norms (so the angles) are still visibly off equilibrium:
# ||w||^4 has closed e^-3 = 95% of its initial gap after 3 of them.
MIN_RELAXATION_TIMES = 3.0


@dataclass
class Hyper:
    wd: float
    momentum: float
    nesterov: bool

    @classmethod
    def of(cls, config: TrainConfig) -> Hyper:
        nesterov = bool(config.nesterov and config.momentum > 0)
        return cls(wd=float(config.weight_decay), momentum=float(config.momentum), nesterov=nesterov)


@dataclass
class LayerResult:
    param: str
    numel: int
    scale_invariant: bool
    median_abs_cos: float
    p90_abs_cos: float
    checkpoint_abs_cos: float | None  # |cos(w, g)| on the newest checkpoint in float64 (`euler_cos`)
    logged_steps: int
    last_step: int
    w_norm_init: float  # before the first logged step
    w_norm_final: float
    lr_final: float
    angle: float  # RMS angle per step over the final window (radians)
    rel_step: float  # RMS ||dw|| / ||w|| over the final window
    angle_pred: float | None  # equilibrium angle at the window's lr (RMS over the window)
    angle_lagged_pred: float | None  # lagged-equilibrium angle under the schedule, same window
    ratio: float | None  # angle / angle_ref (the prediction the report compares with, see Report.compare_to)
    ratio_lagged: float | None
    rel_step_pred: float | None
    rel_step_ratio: float | None
    grad_scale: float  # L = mean ||g||^2 ||w||^2 over the window
    norm_pred: float | None  # equilibrium ||w|| for that L at the window's lr
    norm_lagged_pred: float | None  # lagged ||w|| prediction at the last step
    norm_ratio: float | None  # w_norm_final / norm_lagged_pred
    radial_cos: float  # median cos(w, dw): 0 exactly for plain SGD without wd on invariant weights
    pythagoras_residual: float | None  # median |(|w_a|^2 - |w_b|^2 - |dw|^2) / |dw|^2|, only wd=0, mu=0
    steps_to_equilibrium: int | None  # first step from which the smoothed ratio stays within eq_tol
    steps_to_settle: int | None  # first step from which the smoothed angle stays within eq_tol of its end
    relaxation_steps: float | None  # theory's time constant (1-mu)/(4 eta lambda) at the final lr
    invariance: str = "no"  # "exact", "approximate" (see invariance.APPROX_*; theory applied, flagged) or "no"
    angle_ref: float | None = None  # the prediction `ratio` compares with: angle_pred or angle_lagged_pred
    # Where the run logged the gradients' autocorrelation (--log-grad-lags): its final-window means
    # rho_1..rho_K, and the correlated prediction (`theory.correlated_angle`) as a factor on the uncorrelated one.
    grad_autocorr: list[float] | None = None
    corr_factor: float | None = None  # correlation_factor(rho): the correlated / the uncorrelated prediction
    ratio_corr: float | None = None  # ratio / corr_factor: the measured angle against the correlated prediction
    norm_corr_factor: float | None = None  # the correlated equilibrium norm / the uncorrelated one
    norm_ratio_corr: float | None = None  # norm_ratio / norm_corr_factor


@dataclass
class Report:
    run_dir: str
    status: str
    live: bool
    hyper: Hyper
    window: float
    eq_tol: float
    theory: dict
    layers: list[LayerResult]
    aggregate: dict
    series: dict[str, np.ndarray] = field(repr=False)
    channels: dict[str, np.ndarray] | None = field(default=None, repr=False)
    compare_to: str = EQUILIBRIUM  # which prediction `ratio` is against: EQUILIBRIUM or LAGGED
    lr_schedule: str = "const"
    relaxation_times: float | None = None  # sum over the steps of 4 lr wd / (1 - mu): relaxation times elapsed
    warnings: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerResult:
        for lr in self.layers:
            if lr.param == name:
                return lr
        raise KeyError(name)

    def summary(self) -> dict:
        return {"run_dir": self.run_dir, "status": self.status, "live": self.live, "hyper": asdict(self.hyper),
                "window": self.window, "eq_tol": self.eq_tol, "theory": self.theory,
                "compare_to": self.compare_to, "lr_schedule": self.lr_schedule,
                "relaxation_times": self.relaxation_times, "warnings": self.warnings,
                "aggregate": self.aggregate, "layers": [asdict(lr) for lr in self.layers]}


def match_layers(params: list[str], patterns: list[str] | None) -> list[str]:
    """Parameters matching any pattern: exact name, module prefix (`layer1` -> `layer1.*`) or glob."""
    if not patterns:
        return params
    out = [p for p in params if any(p == q or p.startswith(q + ".") or fnmatch.fnmatchcase(p, q) for q in patterns)]
    if not out:
        raise BnlabError(f"--layers {' '.join(patterns)} matches no logged parameter; logged: {', '.join(params)}")
    return out


def rolling_rms(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing root-mean-square over k samples (fewer at the start), via cumulative sums."""
    c = np.concatenate([[0.0], np.cumsum(x ** 2)])
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - k, 0)
    return np.sqrt(np.maximum(c[n] - c[lo], 0.0) / (n - lo))  # differences of sums can round below 0


def rolling_mean(x: np.ndarray, k: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(x)])
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - k, 0)
    return (c[n] - c[lo]) / (n - lo)


def first_step_staying_within(steps: np.ndarray, ok: np.ndarray) -> int | None:
    """First step from which `ok` holds through the end of the series (None if not at the end)."""
    if len(ok) == 0 or not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    return int(steps[0] if len(bad) == 0 else steps[bad[-1] + 1])


def _rms(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x ** 2))) if x.size else float("nan")


def _nanmedian(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else float("nan")  # numpy warns on an all-NaN slice


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.mean(x)) if x.size else float("nan")


def _fin(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class _Series:
    step: np.ndarray
    lr: np.ndarray
    w_after: np.ndarray
    w_before: np.ndarray
    g: np.ndarray
    dw: np.ndarray
    angle: np.ndarray
    rel: np.ndarray
    cos: np.ndarray


def _series(t: Table) -> _Series:
    w_after, dw, rel = t["w_norm"], t["dw_norm"], t["rel_step"]
    with np.errstate(divide="ignore", invalid="ignore"):
        w_before = np.where(rel > 0, dw / rel, w_after)
    return _Series(t["step"], t["lr"], w_after, w_before, t["g_norm"], dw, t["angle"], rel, t["cos_wg"])


def _predictions(s: _Series, hyper: Hyper, smooth: int, has_theory: bool) -> dict[str, np.ndarray]:
    """Instantaneous and lagged theory along the logged steps of one invariant tensor (NaN without theory:
    not scale-invariant, or no weight decay)."""
    L = rolling_mean((s.g * s.w_before) ** 2, smooth)
    out = {"grad_scale": L}
    if not has_theory:
        nan = np.full(len(s.step), np.nan)
        return {**out, "angle_eq": nan, "norm_eq": nan, "angle_lagged": nan, "norm_lagged": nan}
    out["angle_eq"] = theory.equilibrium_angle(s.lr, hyper.wd, hyper.momentum, hyper.nesterov)
    out["norm_eq"] = theory.equilibrium_norm(s.lr, hyper.wd, hyper.momentum, L)
    # Lagged theory needs every optimizer step: lr and L between logged steps are interpolated
    # (exact for const lr, and the schedules are smooth on the scale of --log-every).
    first, last = int(s.step[0]), int(s.step[-1])
    all_steps = np.arange(first, last + 1, dtype=float)
    lrs = np.interp(all_steps, s.step, s.lr)
    Ls = np.interp(all_steps, s.step, L)
    try:
        v = theory.lagged_norm4(lrs, hyper.wd, hyper.momentum, Ls, s.w_before[0] ** 4)
    except BnlabError:  # lr*wd beyond the small-step theory: no lagged prediction
        v = np.full(len(all_steps), np.nan)
    idx = (s.step - first).astype(int)
    out["norm_lagged"] = v[idx] ** 0.25
    # Angle of step t uses ||w_t|| (before the step): the lagged norm after step t-1.
    v_before = np.concatenate([[s.w_before[0] ** 4], v[:-1]])[idx]
    out["angle_lagged"] = theory.lagged_angle(s.lr, v_before, L, hyper.momentum, hyper.nesterov)
    return out


def _final_window(n: int, window: float) -> slice:
    """The last `window` fraction of n logged steps (at least one)."""
    return slice(n - max(1, int(math.ceil(window * n))), n)


def _default_smooth(table: Table, log_every: int) -> int:
    """About one epoch of logged steps, and at least a few momentum memories."""
    steps = np.unique(table["step"])
    per_epoch = steps[-1] / max(table["epoch"].max(), 1e-9) if "epoch" in table else 50
    return int(np.clip(round(per_epoch / log_every), 5, max(5, len(steps) // 5)))


def _radial_cos(s: _Series) -> float:
    """Median cos(w, dw) from the norms alone: the radial share of each step."""
    with np.errstate(divide="ignore", invalid="ignore"):
        radial = (s.w_after ** 2 - s.w_before ** 2 - s.dw ** 2) / (2 * s.w_before * s.dw)
    return _nanmedian(radial)


def _pythagoras_residual(s: _Series, hyper: Hyper) -> float | None:
    """Plain SGD without weight decay moves an invariant tensor orthogonally: |w_a|^2 = |w_b|^2 + |dw|^2."""
    if hyper.wd != 0 or hyper.momentum != 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = (s.w_after ** 2 - s.w_before ** 2 - s.dw ** 2) / s.dw ** 2
    return _fin(_nanmedian(np.abs(residual)))


@dataclass
class _WindowTheory:
    """The theory's numbers over the final window of one tensor (None where it does not apply)."""

    angle_eq: float | None = None  # RMS equilibrium angle at the logged lrs
    angle_lagged: float | None = None  # RMS lagged angle under the schedule
    angle_ref: float | None = None  # RMS of the prediction compared with (one of the two above)
    rel_step_ref: float | None = None  # RMS chord 2 sin(angle / 2) of that prediction
    norm_lagged: float | None = None  # lagged ||w|| after the last logged step


def _window_theory(pred: dict[str, np.ndarray], win: slice) -> _WindowTheory:
    return _WindowTheory(angle_eq=_rms(pred["angle_eq"][win]), angle_lagged=_rms(pred["angle_lagged"][win]),
                         angle_ref=_rms(pred["angle_ref"][win]),
                         rel_step_ref=_rms(2 * np.sin(pred["angle_ref"][win] / 2)),
                         norm_lagged=float(pred["norm_lagged"][-1]))


def _reference(pred: dict[str, np.ndarray], compare_to: str) -> np.ndarray:
    """The predicted angle series the measured one is compared with."""
    return pred["angle_lagged"] if compare_to == LAGGED else pred["angle_eq"]


def _ratio(measured: float, predicted: float | None) -> float | None:
    """measured / predicted, None when there is no (finite, non-zero) prediction."""
    return _fin(measured / predicted) if predicted else None


def _steps_to_equilibrium(s: _Series, angle_smooth: np.ndarray, ratio: np.ndarray, eq_tol: float,
                          has_theory: bool) -> tuple[int | None, int | None]:
    """(first step from which the smoothed angle stays within eq_tol of the prediction, first step from
    which it stays within eq_tol of its own final value)."""
    to_pred = first_step_staying_within(s.step, np.abs(ratio - 1) <= eq_tol) if has_theory else None
    end = angle_smooth[-1]
    to_end = first_step_staying_within(s.step, np.abs(angle_smooth / end - 1) <= eq_tol) if end > 0 else None
    return to_pred, to_end


def grad_autocorr(gc: Table, steps: np.ndarray) -> list[float] | None:
    """rho_1..rho_K of one tensor: the mean of its logged cos(g_t, g_{t-k}) over the logged `steps` (the final
    window); None where no lag was logged there (NaN lags: fewer steps kept, after a start or a resume)."""
    lags = sorted((c for c in gc.columns if c.startswith("gcos_")), key=lambda c: int(c.split("_")[1]))
    rows = np.isin(gc["step"], steps)
    if not lags or not rows.any():
        return None
    rho = [_nanmean(gc[c][rows]) for c in lags]
    return None if not all(math.isfinite(r) for r in rho) else [float(r) for r in rho]


def _correlated(rho: list[float] | None, ratio: float | None, norm_ratio: float | None, hyper: Hyper,
                has_theory: bool) -> dict[str, float | None]:
    """The corrections by the measured autocorrelation (angle and norm), where there is theory to correct."""
    if rho is None or not has_theory:
        return {}
    full = np.array([1.0, *rho])
    factor = theory.correlation_factor(hyper.momentum, hyper.nesterov, full)
    nfactor = theory.correlation_norm_factor(hyper.momentum, hyper.nesterov, full)
    return {"corr_factor": _fin(factor), "ratio_corr": _fin(ratio / factor) if ratio is not None else None,
            "norm_corr_factor": _fin(nfactor),
            "norm_ratio_corr": _fin(norm_ratio / nfactor) if norm_ratio is not None else None}


def _analyse_tensor(name: str, t: Table, hyper: Hyper, *, smooth: int, window: float, eq_tol: float,
                    cos_tol: float, checkpoint_cos: float | None, compare_to: str, gradcorr: Table | None = None
                    ) -> tuple[LayerResult, dict[str, np.ndarray]]:
    """One parameter tensor's LayerResult and its per-step series columns."""
    s = _series(t)
    n = len(s.step)
    win = _final_window(n, window)
    cs = cos_stats(s.cos, s.rel, cos_tol)
    has_theory = (cs.invariant or cs.approximate) and hyper.wd > 0
    pred = _predictions(s, hyper, smooth, has_theory)
    pred["angle_ref"] = _reference(pred, compare_to)
    angle_smooth = rolling_rms(s.angle, smooth)
    angle, rel = _rms(s.angle[win]), _rms(s.rel[win])
    grad_scale = _nanmean((s.g[win] * s.w_before[win]) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):  # a prediction of 0 (lr 0) gives inf: never "within"
        ratio = angle_smooth / pred["angle_ref"]  # NaN without theory
    w = _window_theory(pred, win) if has_theory else _WindowTheory()
    lr_final = float(s.lr[-1])
    to_pred, to_end = _steps_to_equilibrium(s, angle_smooth, ratio, eq_tol, has_theory)
    rho = grad_autocorr(gradcorr, s.step[win]) if gradcorr is not None else None
    corrected = _correlated(rho, _ratio(angle, w.angle_ref), _ratio(float(s.w_after[-1]), w.norm_lagged), hyper,
                            has_theory)
    result = LayerResult(
        param=name, numel=int(t["numel"][0]) if "numel" in t else -1, scale_invariant=bool(cs.invariant),
        median_abs_cos=cs.median_abs_cos, p90_abs_cos=cs.p90_abs_cos, checkpoint_abs_cos=_fin(checkpoint_cos),
        logged_steps=n, last_step=int(s.step[-1]), w_norm_init=float(s.w_before[0]),
        w_norm_final=float(s.w_after[-1]), lr_final=lr_final, angle=angle, rel_step=rel,
        angle_pred=_fin(w.angle_eq), angle_lagged_pred=_fin(w.angle_lagged),
        ratio=_ratio(angle, w.angle_ref), ratio_lagged=_ratio(angle, w.angle_lagged),
        rel_step_pred=_fin(w.rel_step_ref), rel_step_ratio=_ratio(rel, w.rel_step_ref), grad_scale=grad_scale,
        norm_pred=_fin(float(theory.equilibrium_norm(lr_final, hyper.wd, hyper.momentum, grad_scale)))
        if has_theory else None,
        norm_lagged_pred=_fin(w.norm_lagged), norm_ratio=_ratio(float(s.w_after[-1]), w.norm_lagged),
        radial_cos=_radial_cos(s), pythagoras_residual=_pythagoras_residual(s, hyper),
        steps_to_equilibrium=to_pred, steps_to_settle=to_end,
        relaxation_steps=_fin(float(theory.relaxation_steps(lr_final, hyper.wd, hyper.momentum)))
        if hyper.wd > 0 else None,
        invariance="exact" if cs.invariant else "approximate" if cs.approximate else "no",
        angle_ref=_fin(w.angle_ref), grad_autocorr=rho, **corrected,
    )
    nan = np.full(n, np.nan)
    cols = {"step": s.step, "epoch": t["epoch"] if "epoch" in t else nan, "lr": s.lr,
            "param": np.full(n, name), "scale_invariant": np.full(n, int(cs.invariant)), "w_norm": s.w_after,
            "angle": s.angle, "rel_step": s.rel, "cos_wg": s.cos, "angle_smooth": angle_smooth,
            "grad_scale": pred["grad_scale"]}
    for key in ("angle_eq", "angle_lagged", "norm_eq", "norm_lagged", "angle_ref"):
        cols[key] = pred[key]
    cols["ratio"] = ratio
    return result, cols


def compare_to_of(config: TrainConfig) -> str:
    """LAGGED under an lr schedule (the norms trail the moving equilibrium), else EQUILIBRIUM."""
    return LAGGED if config.lr_schedule != "const" and config.weight_decay > 0 else EQUILIBRIUM


def relaxation_times_elapsed(table: Table, hyper: Hyper) -> float | None:
    """How many relaxation times the run lasted: the sum over its optimizer steps of 4 lr wd / (1 - mu)
    (= steps / relaxation_steps for a constant lr); lrs between logged steps interpolated."""
    if hyper.wd <= 0:
        return None
    steps, first = np.unique(table["step"], return_index=True)
    lrs = np.interp(np.arange(1, int(steps[-1]) + 1), steps, table["lr"][first])
    return float(np.sum(4 * lrs * hyper.wd / (1 - hyper.momentum)))


def _short_run_warning(table: Table, times: float | None) -> list[str]:
    if times is None or times >= MIN_RELAXATION_TIMES:
        return []
    steps = int(table["step"].max())
    return [f"short run: {steps} steps are {times:.1f} relaxation times (< {MIN_RELAXATION_TIMES:g}; one is "
            f"(1 - momentum) / (4 lr wd) steps), so the norms are still relaxing and measured/predicted ratios "
            "are not equilibrium values; train longer"]


def _theory_summary(table: Table, hyper: Hyper, smooth: int) -> dict:
    """The theory's constants and its predictions at the final logged lr."""
    lr_final = float(table["lr"][np.argmax(table["step"])])
    return {"noise_gain_S2": theory.noise_gain(hyper.momentum, hyper.nesterov),
            "nesterov_factor": theory.nesterov_factor(hyper.momentum) if hyper.nesterov else 1.0,
            "lr_final": lr_final,
            "angle_eq_final_lr": _fin(float(theory.equilibrium_angle(lr_final, hyper.wd, hyper.momentum,
                                                                       hyper.nesterov))),
            "rel_step_eq_final_lr": _fin(float(theory.equilibrium_rel_step(lr_final, hyper.wd, hyper.momentum,
                                                                            hyper.nesterov))),
            "relaxation_steps_final_lr": _fin(float(theory.relaxation_steps(lr_final, hyper.wd, hyper.momentum)))
            if hyper.wd > 0 else None,
            "smooth_logged_steps": smooth}


def analyse_log(log: RunLog, *, layers: list[str] | None = None, window: float = 0.25, eq_tol: float = 0.15,
                cos_tol: float = DEFAULT_COS_TOL, checkpoint_cos: dict[str, float] | None = None,
                smooth: int | None = None) -> Report:
    """Analyse a read run log (see module docstring); `checkpoint_cos` = `euler_cos` of a checkpoint."""
    if not 0 < window <= 1:
        raise BnlabError(f"--window must be in (0, 1], got {window}")
    table = log.dynamics
    hyper = Hyper.of(log.config)
    params = match_layers(table.params(), layers)
    if smooth is None:
        smooth = _default_smooth(table, max(1, log.config.log_every or 1))
    compare_to = compare_to_of(log.config)
    results, series_cols = [], {}
    for name in params:
        result, cols = _analyse_tensor(name, table.select(table["param"] == name), hyper, smooth=smooth,
                                       window=window, eq_tol=eq_tol, cos_tol=cos_tol,
                                       checkpoint_cos=None if checkpoint_cos is None else checkpoint_cos.get(name),
                                       compare_to=compare_to,
                                       gradcorr=None if log.gradcorr is None
                                       else log.gradcorr.select(log.gradcorr["param"] == name))
        results.append(result)
        for k, v in cols.items():
            series_cols.setdefault(k, []).append(v)
    series = {k: np.concatenate(v) for k, v in series_cols.items()}
    channels = analyse_channels(log, hyper, params, window, cos_tol) if log.channels is not None else None
    times = relaxation_times_elapsed(table, hyper)
    return Report(run_dir=str(log.run_dir), status=log.status.get("status", "unknown"), live=log.live, hyper=hyper,
                  window=window, eq_tol=eq_tol, theory=_theory_summary(table, hyper, smooth), layers=results,
                  aggregate=aggregate(results), series=series, channels=channels, compare_to=compare_to,
                  lr_schedule=log.config.lr_schedule, relaxation_times=times,
                  warnings=_short_run_warning(table, times))


def aggregate(results: list[LayerResult]) -> dict:
    """Across scale-invariant layers: is the angle the same everywhere while the norms differ?"""
    inv = [r for r in results if r.scale_invariant]
    out: dict = {"scale_invariant": [r.param for r in inv],
                 "not_scale_invariant": [r.param for r in results if not r.scale_invariant],
                 "approximately_invariant": {r.param: r.ratio for r in results if r.invariance == "approximate"},
                 # tensors whose checkpoint |cos| disagrees with the log's verdict by the same threshold
                 "checkpoint_disagrees": [r.param for r in results if r.checkpoint_abs_cos is not None
                                          and (r.checkpoint_abs_cos < DEFAULT_COS_TOL) != r.scale_invariant]}
    if not inv:
        return out
    ang = np.array([r.angle for r in inv])
    norms = np.array([r.w_norm_final for r in inv])
    out.update({"angle_mean": float(ang.mean()), "angle_cv": float(ang.std() / ang.mean()) if ang.mean() else None,
                "norm_min": float(norms.min()), "norm_max": float(norms.max()),
                "norm_spread": float(norms.max() / norms.min()) if norms.min() > 0 else None})
    ratios = np.array([r.ratio for r in inv if r.ratio is not None])
    if ratios.size:
        out.update({"ratio_mean": float(ratios.mean()), "ratio_min": float(ratios.min()),
                    "ratio_max": float(ratios.max()), "angle_pred": inv[0].angle_pred, "angle_ref": inv[0].angle_ref})
    return out


def analyse_channels(log: RunLog, hyper: Hyper, params: list[str], window: float,
                     cos_tol: float) -> dict[str, np.ndarray]:
    """Per (param, output channel): median |cos|, final-window RMS angle, its ratio to theory, final norm.

    Vectorised over all rows with group boundaries (rows are sorted by param, channel, step).
    """
    c = log.channels
    assert c is not None
    c = c.select(np.isin(c["param"], params))
    if len(c) == 0:
        raise BnlabError("dynamics_channels.csv has no rows for the selected layers")
    key_change = np.flatnonzero((c["param"][1:] != c["param"][:-1]) | (c["channel"][1:] != c["channel"][:-1])) + 1
    starts = np.concatenate([[0], key_change])
    ends = np.concatenate([key_change, [len(c)]])
    counts = ends - starts
    pos = np.arange(len(c)) - np.repeat(starts, counts)  # index within group
    nwin = np.maximum(1, np.ceil(window * counts).astype(int))
    in_win = pos >= np.repeat(counts - nwin, counts)
    group = np.repeat(np.arange(len(starts)), counts)
    ang2 = np.bincount(group, weights=np.where(in_win, c["angle"] ** 2, 0.0)) / nwin
    # lr per row from the main log's (step -> lr) map
    d = log.dynamics
    steps, first = np.unique(d["step"], return_index=True)
    lr_rows = np.interp(c["step"], steps, d["lr"][first])
    if hyper.wd > 0:
        pred2 = np.bincount(group, weights=np.where(
            in_win, theory.equilibrium_angle(lr_rows, hyper.wd, hyper.momentum, hyper.nesterov) ** 2, 0.0)) / nwin
    else:
        pred2 = np.full(len(starts), np.nan)
    # median |cos| per group: sort by (group, |cos|) and take the middle element
    order = np.lexsort((np.abs(c["cos_wg"]), group))
    med = np.abs(c["cos_wg"])[order][starts + (counts - 1) // 2]
    with np.errstate(divide="ignore", invalid="ignore"):  # lr 0 over the window: no prediction
        ratio = np.sqrt(ang2) / np.sqrt(pred2)
    return {"param": c["param"][starts], "channel": c["channel"][starts].astype(int),
            "median_abs_cos": med, "scale_invariant": (med < cos_tol).astype(int),
            "angle": np.sqrt(ang2), "angle_pred": np.sqrt(pred2),
            "ratio": ratio, "w_norm_final": c["w_norm"][ends - 1]}


def analyse_run(run_dir: str | Path, *, layers: list[str] | None = None, channels: bool = False,
                check_checkpoint: bool = True, **options: object) -> Report:
    """Read and analyse a run directory (finished or still being written); see `analyse_log`.

    With `check_checkpoint`, the Euler identity is also evaluated on the newest checkpoint (final.pt,
    else last.pt) when there is one, and reported beside the log's verdict.
    """
    log = read_run(run_dir, channels=channels)
    ck = checkpoint_cos(Path(run_dir)) if check_checkpoint else None
    return analyse_log(log, layers=layers, checkpoint_cos=ck, **options)  # type: ignore[arg-type]


def checkpoint_cos(run_dir: Path) -> dict[str, float] | None:
    from ..checkpoint import load_checkpoint
    from .invariance import euler_cos

    for name in ("final.pt", "last.pt"):
        path = run_dir / name
        if path.is_file():
            try:
                ckpt = load_checkpoint(path)
            except BnlabError:
                continue  # being replaced right now, or foreign: the log-based test stands alone
            return euler_cos(ckpt.model)
    return None
