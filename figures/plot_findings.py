#!/usr/bin/env python3
"""The figure of every finding of a `bnlab reproduce` folder, drawn from the stages' result files.

    python figures/plot_findings.py DIR [--out DIR/figures] [--only F2,F9]

Reads DIR/report.json (which findings were decided, and which stage folders hold their data) and writes
FIGDIR/<id>.png per decided finding. `bnlab reproduce` runs this script itself; rerun it to restyle.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_hessian_series import draw as draw_series  # noqa: E402

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


def _save(fig: plt.Figure, f: Finding, out: Path) -> None:
    fig.suptitle(f.title(), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _invariant_series(f: Finding) -> pd.DataFrame:
    s = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_series.csv")
    convs = [p for p in f.values.get("ratios", f.values.get("angles", {}))]
    return s[s["param"].isin(convs)] if convs else s[s["ratio"].notna()]


def fig_f1(f: Finding, out: Path) -> None:
    ch = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_channels_summary.csv")
    ch = ch[ch["param"].str.endswith(".conv.weight")].dropna(subset=["median_abs_cos"])
    ch = ch[ch["median_abs_cos"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    bins = np.logspace(np.log10(max(ch["median_abs_cos"].min(), 1e-12)), np.log10(ch["median_abs_cos"].max()) + 0.1, 40)
    sns.histplot(ch, x="median_abs_cos", hue="param", multiple="stack", bins=bins, ax=axes[0], legend=True)
    axes[0].set(xscale="log", xlabel="per-channel median |cos(w_c, g_c)| over training", ylabel="channels",
                title="trained BN DavidNet: BN-preceded convs")
    axes[0].axvline(1e-3, color="black", ls="--")
    sns.move_legend(axes[0], "upper left", fontsize=6, title=None)
    p = f.values["pythagoras"]
    axes[1].bar(["max Pythagorean\nresidual", "threshold"], [max(p["max_rel_residual"], 1e-18), 1e-4],
                color=["C0", "grey"])
    axes[1].set(yscale="log", title=f"float64 plain SGD, λ = 0, {p['steps']} steps: ‖w‖² grows by η²‖g‖²")
    _save(fig, f, out)


def fig_f2(f: Finding, out: Path) -> None:
    s = _invariant_series(f)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    sns.lineplot(s, x="step", y="ratio", hue="param", lw=1, ax=ax)
    ax.axhspan(0.85, 1.15, color="grey", alpha=0.2, label="±15%")
    ax.axhline(1, color="black", lw=1)
    relax = f.values.get("relaxation_steps")
    if relax:
        for k in range(1, int(s["step"].max() / relax) + 1):
            ax.axvline(k * relax, color="grey", lw=0.5, ls=":")
    ax.set(ylabel="measured / predicted angle (smoothed)", ylim=(0, 2),
           title=f"angle per step / equilibrium prediction {f.values.get('angle_pred', float('nan')):.3g} rad "
                 "(dotted: relaxation times)")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, f, out)


def fig_f3(f: Finding, out: Path) -> None:
    s = _invariant_series(f)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    sns.lineplot(s, x="step", y="angle_smooth", hue="param", lw=1, ax=axes[0], legend=False)
    eq = s.groupby("step")["angle_eq"].first()
    axes[0].plot(eq.index, eq.values, color="black", lw=2, label="prediction")
    axes[0].set(ylabel="angle per step (rad)", title=f"same angle in every layer (CV {f.values['angle_cv']:.3f})")
    axes[0].legend()
    sns.lineplot(s, x="step", y="w_norm", hue="param", lw=1, ax=axes[1])
    axes[1].set(ylabel="‖w‖", yscale="log", title=f"while the norms differ ({f.values['norm_span']:.2f}x)")
    axes[1].legend(fontsize=7)
    _save(fig, f, out)


def fig_f4(f: Finding, out: Path) -> None:
    summary = f.json("sweep_wd", "summary.json")
    pts = pd.DataFrame([p for p in summary["points"] if p.get("angle") is not None])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if not pts.empty:
        sns.scatterplot(pts, x="lr_wd", y="angle", hue="name", s=80, ax=axes[0])
        xs = np.array(sorted(pts["lr_wd"]))
        axes[0].plot(xs, [pts.loc[pts["lr_wd"] == x, "angle_pred"].iloc[0] for x in xs], "k--", label="prediction")
        axes[0].set(xscale="log", yscale="log", xlabel="lr·wd", ylabel="mean angle per step (invariant layers)",
                    title="equal lr·wd, equal angle")
        axes[0].legend(fontsize=7)
        pts["lr_over_wd"] = pts["lr"] / pts["weight_decay"]
        sns.scatterplot(pts, x="lr_over_wd", y="norm_gmean", hue="name", s=80, ax=axes[1], legend=False)
        b = f.values.get("exponent")
        if b is not None and np.isfinite(b):
            x = np.array(sorted(pts["lr_over_wd"]))
            c = np.exp(np.mean(np.log(pts["norm_gmean"]) - b * np.log(pts["lr_over_wd"])))
            axes[1].plot(x, c * x ** b, "k--", label=f"fitted b = {b:.3f}")
            axes[1].plot(x, c * x ** 0.25 * (x[0] ** (b - 0.25)), ":", color="grey", label="b = 1/4")
            axes[1].legend()
        axes[1].set(xscale="log", yscale="log", xlabel="lr / wd", ylabel="geometric-mean ‖w‖",
                    title="‖w‖ ~ (lr/wd)^b")
    _save(fig, f, out)


def fig_f4b(f: Finding, out: Path) -> None:
    v = f.values
    fig, ax = plt.subplots(figsize=(8, 4))
    steps = np.arange(1, len(v["per_step_direction_diff"]) + 1)
    ax.plot(steps, np.maximum(v["per_step_direction_diff"], 1e-18), label="SGD(η, λ) vs exponential lr, λ = 0")
    ax.plot(steps, np.maximum(v["per_step_control_diff"], 1e-18), label="control: constant lr, λ = 0")
    ax.axhline(1e-6, color="black", ls="--", label="threshold 1e-6")
    ax.set(yscale="log", xlabel="step", ylabel="max per-tensor ‖u₁ - u₂‖",
           title=f"float64, μ = 0, lr grows {v['lr_growth']:.3g}x")
    ax.legend(fontsize=8)
    _save(fig, f, out)


def fig_f5(f: Finding, out: Path) -> None:
    c = f.json("collapse_fc", "collapse.json")
    layers = np.arange(1, c["depth"] + 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    axes[0].plot(layers, c["share_plain"], label="ReLU MLP")
    axes[0].plot(layers, c["theory_share"], "k--", label="arc-cosine prediction")
    axes[0].plot(layers, c["share_centred"], label="pre-activations centred (as BN)")
    axes[0].axhline(0.05, color="grey", ls=":", label="0.05")
    axes[0].set(xlabel="layer", ylabel="channel-mean share", ylim=(0, 1.02),
                title=f"FC net at init: width {c['width']}, {c['n_inputs']} inputs")
    axes[0].legend(fontsize=8)
    init = f.json("init_shares", "init_shares.json")
    rows = [{"net": MODELS.get(m, m), "layer": k, "share": v} for m, d in init["shares"].items() for k, v in d.items()]
    sns.barplot(pd.DataFrame(rows), x="layer", y="share", hue="net", ax=axes[1])
    axes[1].set(ylim=(0, 1), title=f"DavidNet width {init['width']} at init (no threshold)")
    axes[1].tick_params(axis="x", rotation=45)
    _save(fig, f, out)


def fig_f6(f: Finding, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for stage, label in (("train_stress_bn", "BN"), ("train_stress_no_bn", "no BN")):
        m = pd.read_csv(f.out(stage) / "metrics.csv")
        line, = ax.plot(m["lr"], m["train_acc"], "o-", ms=3, label=label)
        fp = f.values["bn" if label == "BN" else "no_bn"]
        if fp["failed"]:
            ax.axvline(fp["lr"], color=line.get_color(), ls="--", lw=1,
                       label=f"{label} fails at lr {fp['lr']:.3g} ({fp['how']})")
    ax.axhline(0.15, color="grey", ls=":", lw=1)
    ax.set(xscale="log", xlabel="lr at the end of the epoch", ylabel="training accuracy of the epoch",
           title="LR stress test: lr0 · 2^(epoch/2)")
    ax.legend(fontsize=8)
    _save(fig, f, out)


def _outstats(f: Finding) -> dict[str, dict]:
    return {m: f.json(f"outstats_{m}", "outstats.json") for m in MODELS if f"outstats_{m}" in f.stages}


def fig_f7(f: Finding, out: Path) -> None:
    runs = _outstats(f)
    rows = [{"model": MODELS[m], "layer": lay, "sq_norm": v} for m, s in runs.items()
            for lay, v in zip(s["layers"], s["layer_sq_norms"]["mean[0]"])]
    fig, ax = plt.subplots(figsize=(10, 4.3))
    sns.barplot(pd.DataFrame(rows), x="layer", y="sq_norm", hue="model", ax=ax)
    ax.set(yscale="log", ylabel="‖∇ mean logit 0‖² in the layer", xlabel="")
    ax.tick_params(axis="x", rotation=45)
    _save(fig, f, out)


def fig_f8(f: Finding, out: Path) -> None:
    rows = []
    for m, v in f.values["models"].items():
        for key, when in (("frac_before", "before"), ("frac_grad", "1% step along ∇mean_c")):
            rows.append({"model": MODELS[m], "when": when, "fraction predicted as c": v[key]})
        rows.append({"model": MODELS[m], "when": "|shift| of a random step",
                     "fraction predicted as c": v["shift_random"]})
    fig, ax = plt.subplots(figsize=(9, 4.3))
    sns.barplot(pd.DataFrame(rows), x="model", y="fraction predicted as c", hue="when", ax=ax)
    ax.axhline(0.5, color="grey", ls=":")
    ax.set(ylim=(0, 1), title="mean over the classes c")
    _save(fig, f, out)


def fig_f9(f: Finding, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for m, ev in f.values["eigenvalues"].items():
        ax.plot(np.arange(1, len(ev) + 1), ev, "o-", label=MODELS.get(m, m))
    k = f.values.get("gap_k")
    if k:
        ax.axvline(k + 0.5, color="grey", ls=":", label=f"largest frozen gap (after λ{k})")
    ax.set(yscale="log", xlabel="rank", ylabel="eigenvalue (loss summed over a batch)", title="top Hessian eigenvalues")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)  # outside: the curves fill the axes
    _save(fig, f, out)


def fig_f10(f: Finding, out: Path) -> None:
    rows = []
    for m, s in _outstats(f).items():
        e = s.get("eigen")
        if not e:
            continue
        for key, span in (("overlap_means", "means"), ("overlap_full", "means+vars+skews")):
            rows += [{"model": MODELS[m], "span": span, "rank": i + 1, "overlap": v}
                     for i, v in enumerate(e.get(key, []))]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    df = pd.DataFrame(rows)
    sns.lineplot(df, x="rank", y="overlap", hue="model", style="span", markers=True, ax=ax)
    ax.axhline(f.values["random_expected"], color="grey", ls=":", label="random (dim/P)")
    ax.set(yscale="log", ylabel="‖P v‖²", title="top eigenvectors in the span of the output-statistic gradients")
    ax.legend(fontsize=7)
    _save(fig, f, out)


def fig_f11(f: Finding, out: Path) -> None:
    rows = [{"model": MODELS[m], "when": w, "λ1": c[k]} for m, c in f.values["models"].items()
            for k, w in (("before", "Hessian"), ("after", "span projected out"))]
    fig, ax = plt.subplots(figsize=(8, 4.3))
    sns.barplot(pd.DataFrame(rows), x="model", y="λ1", hue="when", ax=ax)
    ax.set(yscale="log", ylabel="top eigenvalue (loss summed over a batch)")
    _save(fig, f, out)


def fig_f12(f: Finding, out: Path) -> None:
    draw_series(f.json("series_eos", "hessian_series.json"), out, title=f.title())


def fig_f13(f: Finding, out: Path) -> None:
    """The three spectra per model: top eigenvalues of H, G and R, and the class-means term of G."""
    models = f.values["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(12, 4), sharey=True)
    for ax, (m, d) in zip(np.atleast_1d(axes), models.items()):
        for key, label, style in (("hessian", "H", "o-"), ("ggn", "G (Gauss-Newton)", "s--"),
                                  ("class_means", "G class-means term", "^:"), ("residual", "R = H − G", "x-")):
            ev = [v for v in d.get(key) or [] if v > 0]  # a log axis: R's top may be negative
            if ev:
                ax.plot(np.arange(1, len(ev) + 1), ev, style, label=label)
        ax.set(yscale="log", xlabel="rank", title=f"{MODELS.get(m, m)}: top-{d['k']} overlap H/G "
               f"{d.get('overlap', float('nan')):.2f}")
    np.atleast_1d(axes)[0].set_ylabel("eigenvalue (loss summed over a batch)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    _save(fig, f, out)


FIGURES: dict[str, Callable[[Finding, Path], None]] = {
    "F1": fig_f1, "F2": fig_f2, "F3": fig_f3, "F4": fig_f4, "F4b": fig_f4b, "F5": fig_f5, "F6": fig_f6,
    "F7": fig_f7, "F8": fig_f8, "F9": fig_f9, "F10": fig_f10, "F11": fig_f11, "F12": fig_f12,
    "F13": fig_f13,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a `bnlab reproduce` folder")
    ap.add_argument("--out", type=Path, default=None, help="default DIR/figures")
    ap.add_argument("--only", default=None, help="comma-separated finding ids")
    args = ap.parse_args()
    try:
        report = json.loads((args.dir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot_findings: {args.dir} holds no readable report.json ({e})") from None
    out = args.out or args.dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    sns.set_theme(style="whitegrid")
    failed = []
    for rec in report["findings"]:
        if rec["verdict"] == "NOT RUN" or (only and rec["id"] not in only):
            continue
        try:
            FIGURES[rec["id"]](Finding(args.dir, rec), out / f"{rec['id']}.png")
        except Exception:  # one broken figure must not cost the others
            failed.append(rec["id"])
            print(f"plot_findings: {rec['id']} failed:\n{traceback.format_exc()}", file=sys.stderr)
            plt.close("all")
    print(f"figures in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
