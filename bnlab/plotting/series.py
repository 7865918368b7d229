"""The F12 figure of one hessian_series.json (`bnlab hessian RUN_DIR`): lambda1 against threshold / eta, the
ratio with F12's band, and how much of each top eigenvector persists between checkpoints."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style as figstyle

LR_ZERO = 1e-12  # an lr below this is the end of a schedule: no edge of stability to compare with


def figure(series: dict, title: str | None = None) -> Figure:
    """The three panels of one hessian_series.json record."""
    figstyle.apply()
    cps = sorted((c for c in series["checkpoints"] if c.get("eigenvalues")), key=lambda c: c["step"])
    steps = np.array([c["step"] for c in cps], dtype=float)
    lr = np.array([c["lr"] for c in cps], dtype=float)
    scale = float(series.get("settings", {}).get("scale_factor", 1.0))  # batch-summed -> mean loss
    eig = np.array([c["eigenvalues"] for c in cps], dtype=float) / scale
    threshold = float(series["threshold"])
    moving = lr > LR_ZERO
    c_lam, c_ratio = figstyle.colors(2)
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    ax = axes[0]
    for i in range(1, eig.shape[1]):
        ax.plot(steps, eig[:, i], color=c_lam, alpha=0.35, lw=1, label="λ2..λk" if i == 1 else None)
    ax.plot(steps, eig[:, 0], "o-", color=c_lam, label="λ1")
    if moving.any():
        ax.plot(steps[moving], threshold / lr[moving], "--", color="black",
                label=f"threshold / η  ({threshold:.3g} / η)")
    ax.set(xlabel="step", ylabel="eigenvalue (mean loss)", title="Top Hessian eigenvalues")
    figstyle.log_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax = axes[1]
    ax.axhspan(0.5, 2.0, color=c_ratio, alpha=0.12, lw=0, label="0.5-2x (F12's band)")
    ax.axhline(1.0, color="black", lw=1)
    ratio = lr * eig[:, 0] / threshold
    ax.plot(steps[moving], ratio[moving], "o-", color=c_ratio, label="η·λ1 / threshold")
    ax.set(xlabel="step", ylabel="η·λ1 / threshold",
           title=f"Edge of stability (μ = {series['momentum']:g}{', Nesterov' if series.get('nesterov') else ''})")
    figstyle.log_axis(ax)
    if (~moving).any():  # the lr = 0 checkpoints: λ1 is drawn on the left, the ratio is 0 (off a log axis)
        for s in steps[~moving]:
            ax.axvline(s, color="grey", ls=":", lw=1)
        ax.plot([], [], color="grey", ls=":", label="η = 0 (no ratio)")
    ax.legend(fontsize=8, loc="best")
    ax = axes[2]
    rows = [(c["step"], np.asarray(c["overlap_with_previous"], dtype=float).sum(axis=0)) for c in cps
            if c.get("overlap_with_previous") is not None]
    if rows:
        st = np.array([r[0] for r in rows])
        ov = np.stack([r[1] for r in rows])
        for i, color in zip(range(ov.shape[1]), figstyle.colors(ov.shape[1])):
            ax.plot(st, ov[:, i], "o-", ms=4, color=color, label=f"v{i + 1}")
        ax.set(ylim=(-0.02, 1.02), xlabel="step", ylabel="‖P_prev v_i‖²",
               title="Overlap with the previous top-k space")
        figstyle.legend_outside(ax, title="eigenvector")
    else:
        ax.set_axis_off()
    pad = 0.05 * (steps.max() - steps.min()) if steps.size > 1 else 1.0
    axes[0].set_xlim(steps.min() - pad, steps.max() + pad)  # shared: every panel covers every checkpoint
    if title:
        fig.suptitle(title)
    return fig
