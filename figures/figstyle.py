"""The one style of every bnlab figure: seaborn whitegrid theme, colour-blind palette, and a save
that writes each figure as PNG and PDF and says so ("wrote PATH", one line per file).

The plot scripts import this module as `figstyle` (Python puts figures/ on the path when a script
in it runs; tests add it themselves).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = "colorblind"
FORMATS = ("png", "pdf")
DPI = 150


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
    if lo > 0 and hi / lo < 100:
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if hi / lo < 10 else (1.0, 2.0, 5.0)
        target.set_minor_locator(LogLocator(subs=subs))
        target.set_minor_formatter(fmt)


def rotate_xticks(ax: Axes, degrees: float = 40) -> None:
    """Slanted x tick labels whose ends sit under their ticks."""
    for label in ax.get_xticklabels():
        label.set(rotation=degrees, ha="right", rotation_mode="anchor")


def save(fig: Figure, path: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `fig` as PATH.png and PATH.pdf (any suffix of `path` is replaced), print "wrote PATH"
    per file, close the figure; returns the paths written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
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
