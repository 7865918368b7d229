"""The one style of every bnlab figure: seaborn whitegrid theme, colour-blind palette, and a save
that writes each figure as PNG and PDF and says so ("wrote PATH", one line per file).

Output paths, the same in every script: `-o/--out DIR` is a folder (created when missing) that gets
each figure as STEM.png and STEM.pdf; a script that draws one figure also takes `-o FILE.png` (or .pdf,
or a name without suffix) and writes FILE.png and FILE.pdf. `--out figs/` is always the folder figs.

The plot scripts in figures/ import it as `figstyle` (figures/figstyle.py re-exports this module; Python
puts figures/ on the path when a script in it runs); the package's own figures (`bnlab.reproduce.figures`)
import it from here, lazily, so that matplotlib and seaborn load only when a figure is drawn.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = "colorblind"
FORMATS = ("png", "pdf")
DPI = 150
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NORMS = {"bn": "BN", "bn_fixed_affine": "BN", "ghost": "ghost BN", "frozen": "frozen BN", "none": "no BN"}


def apply() -> None:
    """Set the theme (call before drawing; every figure function does)."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.9)


def colors(n: int) -> list[tuple[float, float, float]]:
    """n distinguishable colours of the colour-blind palette without its grey (grey and black are
    kept for references: theory lines, bands, legend keys); repeats after 9."""
    base = [c for c in sns.color_palette(PALETTE) if not _is_grey(c)]
    return [base[i % len(base)] for i in range(n)]


def _is_grey(c: tuple[float, float, float]) -> bool:
    return max(c) - min(c) < 0.05


def color_map(names: Iterable[object]) -> dict[object, tuple[float, float, float]]:
    """A fixed colour per name, in order of first appearance (the same name gets the same colour
    in every panel of a figure)."""
    unique = list(dict.fromkeys(names))
    return dict(zip(unique, colors(len(unique))))


def legend_outside(ax: Axes, title: str | None = None, **kwargs: object) -> None:
    """The axes' legend to the right of it, where it cannot hide data."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, **kwargs)


def plain_log_ticks(ax: Axes, axis: str = "y") -> None:
    """Tick labels of a log axis as plain numbers (0.03, 2, 300) instead of 3×10⁻²."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    target.set_major_formatter(fmt)
    # label minor ticks too when the axis spans few decades (else it shows one or two numbers)
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 100.5:  # (100.5: log_axis's limits may span exactly two decades)
        subs = _log_subs(lo, hi, axis)
        target.set_minor_locator(LogLocator(subs=subs))
        target.set_minor_formatter(fmt)


def _log_subs(lo: float, hi: float, axis: str) -> tuple[float, ...]:
    """Labelled ticks per decade: dense on a short y axis; on x (wider labels) 1-2-5 so that none touch."""
    return (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if hi / lo < 10 and axis == "y" else (1.0, 2.0, 5.0)


def log_axis(ax: Axes, axis: str = "y") -> None:
    """A log axis with plain tick labels whose limits end on labelled ticks, so that no point sits above
    the last number or below the first (call after plotting)."""
    import numpy as np

    ax.set_xscale("log") if axis == "x" else ax.set_yscale("log")
    get, put = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    # the data (of every panel sharing this axis), not the padded view; a little room so no marker sits on the edge
    shared = (ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()).get_siblings(ax)
    spans = [a.dataLim.intervalx if axis == "x" else a.dataLim.intervaly for a in shared]
    lo, hi = min(v[0] for v in spans) / 1.02, max(v[1] for v in spans) * 1.02
    if not (lo > 0 and np.isfinite(hi)):
        lo, hi = get()
    if not (lo > 0 and hi > lo):
        return
    subs = _log_subs(lo, hi, axis) if hi / lo < 100 else (1.0,)
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    ticks = sorted(s * 10.0 ** d for d in decades for s in subs)
    below = max(t for t in ticks if t <= lo * (1 + 1e-9))
    above = min(t for t in ticks if t >= hi * (1 - 1e-9))
    put(below, above)
    plain_log_ticks(ax, axis)


def integer_ticks(ax: Axes, axis: str = "x") -> None:
    """Only whole numbers as ticks (ranks, layers, epochs): never 1.5 or 2.5."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def model_label(settings: Mapping[str, object]) -> str:
    """What a result was computed on, from its record's settings: "simple w2, frozen BN" (the model
    description, not the folder name)."""
    model = settings.get("model")
    if not isinstance(model, Mapping):
        return str(settings.get("variant") or "?")
    arch = {"davidnet": "DavidNet", "simple": "simple net"}.get(str(model.get("model")), str(model.get("model")))
    norm = NORMS.get(str(model.get("norm")), str(model.get("norm")))
    if model.get("norm") == "ghost" and model.get("ghost_splits"):
        norm = f"ghost BN ({model['ghost_splits']} splits)"
    return f"{arch} w{model.get('width')}, {norm}"


def unique_labels(labels: Sequence[str], fallbacks: Sequence[str]) -> list[str]:
    """`labels`, with the fallback (e.g. the folder name) appended where two labels would be equal."""
    counts = {lab: labels.count(lab) for lab in labels}
    return [f"{lab} ({fb})" if counts[lab] > 1 else lab for lab, fb in zip(labels, fallbacks)]


def class_names(settings: Mapping[str, object], n: int) -> list[str]:
    """Names of the classes 0..n-1: CIFAR-10's for CIFAR-10 data, else "class k"."""
    if str(settings.get("dataset")) == "cifar10" and n == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return [f"class {k}" for k in range(n)]


def out_file(prog: str, out: Path | None, stem: str, default_dir: Path) -> Path:
    """Where a one-figure script writes: `out` a folder (existing, trailing slash or no suffix) -> out/stem;
    out/NAME.png or .pdf -> that name; None -> default_dir/stem. The suffix is replaced by each format."""
    if out is None:
        return default_dir / stem
    text = str(out)
    if out.is_dir() or text.endswith(("/", "\\")) or not out.suffix:
        return out / stem
    if out.suffix.lower() not in (f".{fmt}" for fmt in FORMATS):
        raise fail(prog, f"--out {out}: give a folder or a .png/.pdf name (both formats are written)")
    return out.with_suffix("")


def out_dir(prog: str, out: Path) -> Path:
    """Where a several-figure script writes: `out` is a folder; a .png/.pdf name is refused (one name
    cannot hold several figures)."""
    if out.suffix.lower() in (f".{fmt}" for fmt in FORMATS) and not out.is_dir():
        raise fail(prog, f"--out {out}: this script writes several figures; give a folder")
    return out


def rotate_xticks(ax: Axes, degrees: float = 40) -> None:
    """Slanted x tick labels whose ends sit under their ticks."""
    for label in ax.get_xticklabels():
        label.set(rotation=degrees, ha="right", rotation_mode="anchor")


def split_violins(panels: Mapping[str, Mapping[str, object]], halves: Sequence[str], *, channels: int, ncols: int,
                  panel_size: tuple[float, float], ylabel: str, legend_title: str) -> tuple[Figure, list[Axes]]:
    """A grid of split violins, one panel per entry of `panels` ({title: {half: (channels, n) tensor}}):
    per channel, the left half of each violin is `halves[0]`'s values, the right half `halves[1]`'s.
    Unused grid cells are hidden; one legend below the grid. Returns the figure and the used axes."""
    apply()
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.9), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [grid[i // ncols][i % ncols] for i in range(len(panels))]
    for i, (ax, (title, values)) in enumerate(zip(axes, panels.items())):
        rows = [{"channel": c + 1, "half": half, "value": float(x)}
                for half in halves for c in range(min(channels, values[half].shape[0]))
                for x in values[half][c].double()]
        sns.violinplot(pd.DataFrame(rows), x="channel", y="value", hue="half", hue_order=list(halves), split=True,
                       inner=None, density_norm="width", cut=0, linewidth=0.6, palette=colors(len(halves)), ax=ax,
                       legend=i == 0)
        last_row = i + ncols >= len(panels)
        ax.set(title=title, xlabel="channel" if last_row else "", ylabel=ylabel if i % ncols == 0 else "")
        ax.title.set_fontsize(9)
    for j in range(len(panels), nrows * ncols):
        grid[j // ncols][j % ncols].set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(halves), frameon=False, title=legend_title)
    return fig, axes


def save(fig: Figure, path: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `fig` as PATH.png and PATH.pdf (any suffix of `path` is replaced), print "wrote PATH"
    per file, close the figure; returns the paths written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_name(f"{path.stem if path.suffix in ('.png', '.pdf') else path.name}.{fmt}")
        fig.savefig(target, dpi=DPI, bbox_inches="tight")
        print(f"wrote {target}")
        written.append(target)
    plt.close(fig)
    return written


def fail(prog: str, message: str) -> SystemExit:
    """The scripts' one error form: `prog: error: message` on stderr, exit status 2 (as argparse)."""
    import sys

    print(f"{prog}: error: {message}", file=sys.stderr)
    return SystemExit(2)
