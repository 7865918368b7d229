#!/usr/bin/env python3
"""The figure of every finding of a `bnlab reproduce` folder, drawn from the stages' result files.

    python figures/plot_findings.py DIR [-o DIR/figures] [--only F2,F9]

Reads DIR/report.json (which findings were decided, and which stage folders hold their data) and writes
OUT/<id>.png and OUT/<id>.pdf per decided finding (OUT: -o, default DIR/figures), one "wrote PATH" line
per file. `bnlab reproduce` runs this script itself; rerun it to restyle.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import figstyle
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from plot_hessian_series import figure as series_figure

PROG = "plot_findings"
MODELS = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}


class Finding:
    """One finding's record and where its stages' outputs are."""

    def __init__(self, root: Path, rec: dict) -> None:
        self.rec, self.root = rec, root
        self.stages = rec.get("setting", {}).get("stages", {})

    def out(self, stage: str) -> Path:
        return self.root / self.stages[stage]["folder"] / "out"

    def json(self, stage: str, name: str) -> dict:
        return json.loads((self.out(stage) / name).read_text())

    @property
    def values(self) -> dict:
        return self.rec["values"]

    def title(self) -> str:
        return f"{self.rec['id']} ({self.rec['verdict']}): {self.rec['title']}"


def _figure(f: Finding, width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    figstyle.apply()
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(f.title(), fontsize=11)
    return fig, list(axes)


def _model_names(f: Finding, stage_of: Callable[[str], str], name: str) -> dict[str, str]:
    """{bn|frozen|no_bn: the model as its record describes it}, e.g. "simple net w2, frozen BN"."""
    names = {}
    for m, short in MODELS.items():
        try:
            names[m] = figstyle.model_label(f.json(stage_of(m), name)["settings"])
        except (KeyError, OSError, ValueError):
            names[m] = short
    return names


def _invariant_series(f: Finding) -> pd.DataFrame:
    s = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_series.csv")
    convs = [p for p in f.values.get("ratios", f.values.get("angles", {}))]
    return s[s["param"].isin(convs)] if convs else s[s["ratio"].notna()]


def _layer_lines(ax, s: pd.DataFrame, y: str, colors: dict) -> None:  # noqa: ANN001
    for p, g in s.groupby("param", sort=False):
        ax.plot(g["step"], g[y], color=colors[p], lw=1.2, label=p)


def fig_f1(f: Finding) -> Figure:
    ch = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_channels_summary.csv")
    ch = ch[ch["param"].str.endswith(".conv.weight")].dropna(subset=["median_abs_cos"])
    ch = ch[ch["median_abs_cos"] > 0]
    fig, axes = _figure(f, 13, 4.4, 2)
    lo = np.log10(max(ch["median_abs_cos"].min(), 1e-12))
    bins = np.logspace(min(lo, -4), max(np.log10(ch["median_abs_cos"].max()), -2.5) + 0.1, 40)
    params = list(dict.fromkeys(ch["param"]))
    sns.histplot(ch, x="median_abs_cos", hue="param", hue_order=params, multiple="stack", bins=bins, ax=axes[0],
                 palette=figstyle.color_map(params), legend=True)
    axes[0].axvline(1e-3, color="black", ls="--", lw=1.2)
    axes[0].text(1e-3, 0.97, " threshold 1e-3", transform=axes[0].get_xaxis_transform(), va="top", fontsize=8)
    axes[0].set(xscale="log", xlabel="per-channel median |cos(w_c, g_c)| over training", ylabel="channels",
                title="Trained BN DavidNet: BN-preceded convs")
    sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=7, title="layer")
    p = f.values["pythagoras"]
    res = max(p["max_rel_residual"], 1e-18)
    colors = figstyle.colors(1) + ["grey"]
    axes[1].bar(["max Pythagorean\nresidual", "threshold"], [res, 1e-4], color=colors)
    axes[1].bar_label(axes[1].containers[0], labels=[f"{res:.1e}", "1e-4"], fontsize=8)
    axes[1].set(yscale="log", title=f"float64 plain SGD, λ = 0, {p['steps']} steps: ‖w‖² grows by η²‖g‖²")
    return fig


def _relaxation_marks(ax, f: Finding, last_step: float) -> None:  # noqa: ANN001
    relax = f.values.get("relaxation_steps")
    if not relax:
        return
    for k in range(1, int(last_step / relax) + 1):
        ax.axvline(k * relax, color="black", lw=1, ls="--", alpha=0.6)
        ax.text(k * relax, 0.98, f" {k}τ", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.plot([], [], color="black", lw=1, ls="--", alpha=0.6, label=f"k relaxation times τ = {relax:.3g} steps")


def fig_f2(f: Finding) -> Figure:
    s = _invariant_series(f)
    s = s[s["ratio"] > 0]
    fig, (ax,) = _figure(f, 11, 4.8)
    colors = figstyle.color_map(s["param"])
    ax.axhspan(1 - 0.15, 1 + 0.15, color="grey", alpha=0.25, lw=0, label="±15% (F2's band)")
    ax.axhline(1, color="black", lw=1.2)
    _layer_lines(ax, s, "ratio", colors)
    _relaxation_marks(ax, f, s["step"].max())
    times = f.values.get("relaxation_times")
    ax.set(xlabel="step", ylabel="measured / predicted angle (smoothed)",
           title=f"Angle per step / equilibrium prediction {f.values.get('angle_pred', float('nan')):.3g} rad"
                 + (f"; the run lasts {times:.1f} τ (F2 needs 5)" if times else ""))
    figstyle.log_axis(ax)  # the start's transient is many times the prediction: a log axis keeps it all in view
    figstyle.legend_outside(ax, title="layer", fontsize=8)
    return fig


def fig_f3(f: Finding) -> Figure:
    s = _invariant_series(f)
    fig, axes = _figure(f, 14, 4.6, 2)
    colors = figstyle.color_map(s["param"])
    _layer_lines(axes[0], s, "angle_smooth", colors)
    eq = s.groupby("step")["angle_eq"].first()
    axes[0].plot(eq.index, eq.values, color="black", lw=2.2, label="prediction")
    axes[0].set(xlabel="step", ylabel="angle per step (rad, smoothed)",
                title=f"The same angle in every layer (CV {f.values['angle_cv']:.3f})")
    figstyle.log_axis(axes[0])
    _layer_lines(axes[1], s, "w_norm", colors)
    axes[1].set(xlabel="step", ylabel="‖w‖", title=f"while the norms differ ({f.values['norm_span']:.2f}x)")
    figstyle.log_axis(axes[1])
    figstyle.legend_outside(axes[1], title="layer", fontsize=8)  # one legend: the colours are the same layers
    return fig


def fig_f4(f: Finding) -> Figure:
    summary = f.json("sweep_wd", "summary.json")
    pts = pd.DataFrame([p for p in summary["points"] if p.get("angle") is not None])
    fig, axes = _figure(f, 13, 4.6, 2)
    if pts.empty:
        return fig
    pts["label"] = [f"lr {lr:g}, wd {wd:g}" for lr, wd in zip(pts["lr"], pts["weight_decay"])]
    pts["lr_over_wd"] = pts["lr"] / pts["weight_decay"]
    colors = figstyle.color_map(pts["label"])
    for _, r in pts.iterrows():
        axes[0].scatter(r["lr_wd"], r["angle"], s=70, color=colors[r["label"]], label=r["label"], zorder=3)
        axes[1].scatter(r["lr_over_wd"], r["norm_gmean"], s=70, color=colors[r["label"]], zorder=3)
    xs = np.array(sorted(set(pts["lr_wd"])))
    axes[0].plot(xs, [pts.loc[pts["lr_wd"] == x, "angle_pred"].iloc[0] for x in xs], "k--", label="prediction")
    axes[0].set(xlabel="lr·wd", ylabel="mean angle per step (invariant layers)", title="Equal lr·wd, equal angle")
    b = f.values.get("exponent")
    if b is not None and np.isfinite(b):
        x = np.array(sorted(pts["lr_over_wd"]))
        c = np.exp(np.mean(np.log(pts["norm_gmean"]) - b * np.log(pts["lr_over_wd"])))
        axes[1].plot(x, c * x ** b, "k--", label=f"fitted b = {b:.3f}")
        axes[1].plot(x, c * x ** 0.25 * (x[0] ** (b - 0.25)), ":", color="grey", label="b = 1/4")
        axes[1].legend(fontsize=8, loc="upper left")
    axes[1].set(xlabel="lr / wd", ylabel="geometric-mean ‖w‖", title="‖w‖ ~ (lr/wd)^b")
    for ax in axes:
        figstyle.log_axis(ax, "x")
        figstyle.log_axis(ax, "y")
    figstyle.legend_outside(axes[0], title="sweep point", fontsize=8)
    return fig


def fig_f4b(f: Finding) -> Figure:
    v = f.values
    fig, (ax,) = _figure(f, 9, 4.2)
    steps = np.arange(1, len(v["per_step_direction_diff"]) + 1)
    c1, c2 = figstyle.colors(2)
    ax.plot(steps, np.maximum(v["per_step_direction_diff"], 1e-18), color=c1,
            label="SGD(η, λ) vs exponential lr, λ = 0")
    ax.plot(steps, np.maximum(v["per_step_control_diff"], 1e-18), color=c2, label="control: constant lr, λ = 0")
    ax.axhline(1e-6, color="black", ls="--", label="threshold 1e-6")
    ax.set(yscale="log", xlabel="step", ylabel="max per-tensor ‖u₁ - u₂‖",
           title=f"float64, μ = 0, {len(steps)} steps (the claim asks for 200), lr grows {v['lr_growth']:.3g}x")
    figstyle.legend_outside(ax, fontsize=8)
    return fig


def fig_f5(f: Finding) -> Figure:
    c = f.json("collapse_fc", "collapse.json")
    layers = np.arange(1, c["depth"] + 1)
    fig, axes = _figure(f, 14, 4.6, 2)
    c1, c2 = figstyle.colors(2)
    axes[0].plot(layers, c["share_plain"], color=c1, label="ReLU MLP")
    axes[0].plot(layers, c["theory_share"], "k--", label="arc-cosine prediction")
    axes[0].plot(layers, c["share_centred"], color=c2, label="pre-activations centred (as BN)")
    # F5's centred clause: flat at 1/pi +- 0.05 from layer 2 on
    axes[0].fill_between(layers[1:], 1 / np.pi - 0.05, 1 / np.pi + 0.05, color=c2, alpha=0.15, lw=0,
                         label="1/π ± 0.05 (F5's band, centred, layers ≥ 2)")
    axes[0].set(xlabel="layer", ylabel="channel-mean share", ylim=(0, 1.02),
                title=f"FC net at init: width {c['width']}, {c['n_inputs']} inputs")
    figstyle.integer_ticks(axes[0])
    axes[0].legend(fontsize=8, loc="center right")
    init = f.json("init_shares", "init_shares.json")
    rows = [{"net": MODELS.get(m, m), "layer": k, "share": v} for m, d in init["shares"].items() for k, v in d.items()]
    nets = list(dict.fromkeys(r["net"] for r in rows))
    sns.barplot(pd.DataFrame(rows), x="layer", y="share", hue="net", palette=figstyle.color_map(nets), ax=axes[1])
    axes[1].set(ylim=(0, 1), title=f"DavidNet width {init['width']} at init (reported, no threshold)")
    figstyle.rotate_xticks(axes[1])
    figstyle.legend_outside(axes[1], title="DavidNet")
    return fig


def fig_f6(f: Finding) -> Figure:
    fig, (ax,) = _figure(f, 10, 4.6)
    for (stage, label), color in zip((("train_stress_bn", "BN"), ("train_stress_no_bn", "no BN")), figstyle.colors(2)):
        m = pd.read_csv(f.out(stage) / "metrics.csv")
        ax.plot(m["lr"], m["train_acc"], "o-", ms=4, color=color, label=label)
        fp = f.values["bn" if label == "BN" else "no_bn"]
        if fp["failed"]:
            ax.axvline(fp["lr"], color=color, ls="--", lw=1.2,
                       label=f"{label} fails at lr {fp['lr']:.3g} ({fp['how']})")
    ax.axhline(0.15, color="grey", ls=":", lw=1.2, label="chance level + 5% (0.15)")
    ax.set(xscale="log", xlabel="lr at the end of the epoch", ylabel="training accuracy of the epoch",
           title="LR stress test: lr0 · 2^(epoch/2)")
    figstyle.plain_log_ticks(ax, "x")
    figstyle.legend_outside(ax, fontsize=8)
    return fig


def _outstats(f: Finding) -> dict[str, dict]:
    return {m: f.json(f"outstats_{m}", "outstats.json") for m in MODELS if f"outstats_{m}" in f.stages}


def _named_outstats(f: Finding) -> tuple[dict[str, dict], dict[str, str]]:
    """The outstats records of the finding's models, and each model as its record describes it."""
    runs = _outstats(f)
    return runs, {m: figstyle.model_label(s["settings"]) if s.get("settings") else MODELS[m] for m, s in runs.items()}


def fig_f7(f: Finding) -> Figure:
    runs, names = _named_outstats(f)
    rows = [{"model": names[m], "layer": lay, "sq_norm": v} for m, s in runs.items()
            for lay, v in zip(s["layers"], s["layer_sq_norms"]["mean[0]"])]
    fig, (ax,) = _figure(f, 11, 4.6)
    sns.barplot(pd.DataFrame(rows), x="layer", y="sq_norm", hue="model", palette=figstyle.color_map(names.values()),
                ax=ax)
    ax.set(yscale="log", ylabel="‖∇ mean logit 0‖² in the layer", xlabel="layer")
    figstyle.plain_log_ticks(ax)
    figstyle.rotate_xticks(ax)
    figstyle.legend_outside(ax, title="model")
    return fig


def fig_f8(f: Finding) -> Figure:
    models = f.values["models"]
    _, names = _named_outstats(f)
    fig, axes = _figure(f, 13, 4.6, 2)
    whens = ("before", "after a 1% step along ∇mean_c")
    rows = [{"model": names[m], "when": w, "fraction": v[k]} for m, v in models.items()
            for k, w in (("frac_before", whens[0]), ("frac_grad", whens[1]))]
    c = figstyle.colors(4)
    sns.barplot(pd.DataFrame(rows), x="model", y="fraction", hue="when", hue_order=list(whens),
                palette=c[:2], ax=axes[0])
    axes[0].axhline(0.5, color="black", ls="--", lw=1.2, label="F8: ≥ 0.5 (frozen, no BN)")
    axes[0].set(ylim=(0, 1), xlabel="", ylabel="fraction predicted as c (mean over c)",
                title="Predictions after a step along ∇mean_c")
    shifts = ("|shift| of that step", "|shift| of a random step of the same size")
    rows = [{"model": names[m], "what": w, "shift": v[k]} for m, v in models.items()
            for k, w in (("shift_grad", shifts[0]), ("shift_random", shifts[1]))]
    sns.barplot(pd.DataFrame(rows), x="model", y="shift", hue="what", hue_order=list(shifts), palette=c[2:], ax=axes[1])
    axes[1].axhline(0.2, color="black", ls="--", lw=1.2, label="F8: < 0.2 (BN's step, random steps)")
    top = max(0.25, 1.15 * max(r["shift"] for r in rows))
    axes[1].set(ylim=(0, top), xlabel="", ylabel="|change| of the fraction predicted as c",
                title="How far the predictions move")
    for ax, fmt in zip(axes, ("%.2f", "%.2g")):  # every bar says its value: a random step's shift is tiny
        for cont in ax.containers:
            ax.bar_label(cont, fmt=fmt, fontsize=7, padding=2)
        figstyle.rotate_xticks(ax, 15)
        ax.legend(fontsize=8, loc="upper left")
    return fig


def fig_f9(f: Finding) -> Figure:
    fig, (ax,) = _figure(f, 10, 4.6)
    names = _model_names(f, lambda m: f"hessian_{m}", "hessian.json")
    colors = figstyle.color_map(names.values())
    k_max = 1
    for m, ev in f.values["eigenvalues"].items():
        k_max = max(k_max, len(ev))
        ax.plot(np.arange(1, len(ev) + 1), ev, "o-", color=colors[names.get(m, m)], label=names.get(m, m))
    k = f.values.get("gap_k")
    if k:
        ax.axvline(k + 0.5, color="black", ls="--", lw=1.2, label=f"largest frozen gap (after λ{k})")
    ax.set(xlabel="rank", ylabel="eigenvalue (loss summed over a batch)", title="Top Hessian eigenvalues",
           xlim=(0.5, k_max + 0.5))
    figstyle.integer_ticks(ax)
    figstyle.log_axis(ax)
    figstyle.legend_outside(ax, title="model")
    return fig


def fig_f10(f: Finding) -> Figure:
    runs, names = _named_outstats(f)
    spans = (("overlap_means", "span of the mean gradients"), ("overlap_full", "span of mean, var, skew gradients"))
    fig, (ax,) = _figure(f, 10, 4.6)
    colors = figstyle.colors(len(spans))
    k_max = 1
    frozen = runs.get("frozen", {}).get("eigen") or {}
    for (key, span), color, marker in zip(spans, colors, ("o", "s")):
        v = frozen.get(key) or []
        k_max = max(k_max, len(v))
        ax.plot(np.arange(1, len(v) + 1), v, marker=marker, color=color, label=span)
    ax.axhline(f.values["random_expected"], color="black", ls="--", lw=1.2, label="a random direction (dim/P)")
    ax.set(xlabel="eigenvector rank", ylabel="‖P v‖²", xlim=(0.5, k_max + 0.5),
           title=f"Top eigenvectors of {names.get('frozen', 'frozen BN')} in the output-statistic span")
    figstyle.integer_ticks(ax)
    figstyle.log_axis(ax)
    figstyle.legend_outside(ax)
    return fig


def fig_f11(f: Finding) -> Figure:
    _, names = _named_outstats(f)
    rows = [{"model": names.get(m, m), "when": w, "λ1": c[k]} for m, c in f.values["models"].items()
            for k, w in (("before", "H"), ("after", "(I−P) H (I−P): span projected out"))]
    fig, (ax,) = _figure(f, 10, 4.6)
    sns.barplot(pd.DataFrame(rows), x="model", y="λ1", hue="when", palette=figstyle.colors(2), ax=ax)
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.3g", fontsize=8, padding=2)
    ax.set(yscale="log", xlabel="", ylabel="top eigenvalue (loss summed over a batch)")
    figstyle.plain_log_ticks(ax)
    figstyle.legend_outside(ax)
    return fig


def fig_f12(f: Finding) -> Figure:
    return series_figure(f.json("series_eos", "hessian_series.json"), title=f.title())


def fig_f13(f: Finding) -> Figure:
    """The three spectra per model: top eigenvalues of H, G and R, and the class-means term of G."""
    models = f.values["models"]
    fig, axes = _figure(f, 14, 4.6, len(models))
    colors = figstyle.colors(4)
    for ax, (m, d) in zip(axes, models.items()):
        for (key, label, style), c in zip((("hessian", "H", "o-"), ("ggn", "G (Gauss-Newton)", "s--"),
                                           ("class_means", "G class-means term", "^:"),
                                           ("residual", "R = H − G", "x-")), colors):
            ev = [v for v in d.get(key) or [] if v > 0]  # a log axis: R's top may be negative
            if ev:
                ax.plot(np.arange(1, len(ev) + 1), ev, style, color=c, label=label)
        ax.set(yscale="log", xlabel="rank", title=f"{MODELS.get(m, m)}: top-{d['k']} overlap H/G "
               f"{d.get('overlap', float('nan')):.2f}")
        figstyle.integer_ticks(ax)
    axes[0].set_ylabel("eigenvalue (loss summed over a batch)")
    figstyle.legend_outside(axes[-1], fontsize=8)
    return fig


FIGURES: dict[str, Callable[[Finding], Figure]] = {
    "F1": fig_f1, "F2": fig_f2, "F3": fig_f3, "F4": fig_f4, "F4b": fig_f4b, "F5": fig_f5, "F6": fig_f6,
    "F7": fig_f7, "F8": fig_f8, "F9": fig_f9, "F10": fig_f10, "F11": fig_f11, "F12": fig_f12,
    "F13": fig_f13,
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a `bnlab reproduce` folder")
    ap.add_argument("-o", "--out", type=Path, default=None, help="folder for the figures (default DIR/figures)")
    ap.add_argument("--only", default=None, help="comma-separated finding ids")
    args = ap.parse_args(argv)
    try:
        report = json.loads((args.dir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"{args.dir} holds no readable report.json ({e})") from None
    out = figstyle.out_dir(PROG, args.out or args.dir / "figures")
    only = set(args.only.split(",")) if args.only else None
    failed = []
    for rec in report["findings"]:
        if rec["verdict"] == "NOT RUN" or (only and rec["id"] not in only):
            continue
        try:
            fig = FIGURES[rec["id"]](Finding(args.dir, rec))
        except Exception:  # one broken figure must not cost the others
            failed.append(rec["id"])
            print(f"{PROG}: {rec['id']} failed:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        figstyle.save(fig, out / rec["id"])
    if failed:
        print(f"{PROG}: error: no figure for {', '.join(failed)} (tracebacks above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
