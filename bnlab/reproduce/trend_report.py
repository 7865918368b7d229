"""The width trend's record as files: OUT/width_trend.json (strict JSON), width_trend.md (one row per width:
what F7 and F9 decide on, their verdicts, the post's values in the header) and width_trend.png/.pdf (the
classifier share, the frozen gap and lambda1 frozen/BN against width, the post's value and the threshold as
reference lines), drawn with bnlab.plotting's style."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from ..findings.record import fmt
from ..io.jsonfile import write_json
from ..io.textfile import write_text

FIGURE_STEM = "width_trend"
_NAMES = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}


def write_trend(record: dict[str, Any], out: Path) -> list[Path]:
    """width_trend.json, the figure (its problem, if any, goes into the record) and width_trend.md."""
    record["figure_problem"] = None
    try:
        written = draw_trend(record, out)
    except Exception as e:  # no matplotlib, or a figure bug: one line in the record, never a failed trend
        written, record["figure_problem"] = [], f"no figure: {' '.join(str(e).split())[:200] or type(e).__name__}"
    paths = [write_json(out / "width_trend.json", record), *written]
    write_text(out / "width_trend.md", markdown(record))
    return [*paths, out / "width_trend.md"]


def draw_trend(record: dict[str, Any], out: Path) -> list[Path]:
    from ..plotting import style

    with contextlib.redirect_stdout(io.StringIO()):  # style.save prints "wrote"; the trend logs its own lines
        return style.save(trend_figure(record), out / FIGURE_STEM)


def _get(row: dict[str, Any], fid: str, *keys: str) -> Any:
    v: Any = row.get(fid)
    for k in keys:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _post_ours(row: dict[str, Any], quantity: str, model: str) -> Any:
    """Ours of the post's quantity (the report's posts table of that width)."""
    return next((p["ours"] for p in row["posts"] if p["quantity"].startswith(quantity) and p["model"] == model), None)


def _gap_cell(row: dict[str, Any]) -> str:
    k = _get(row, "F9", "gap_k")
    if not k:
        top = _get(row, "F9", "frozen_top_k")
        return f"not measured (top-{top})" if top is not None else "-"
    return f"{fmt(_get(row, 'F9', 'gap'), '.2f')} (λ{k}/λ{k + 1})"


COLUMNS = ("width", "F7", "classifier share BN / frozen / no BN (mean over classes)", "BN share, class 0",
           "‖∇mean‖² frozen/BN, no BN/BN", "F9", "λ1 BN / frozen / no BN", "λ1 frozen/BN",
           "frozen largest gap, k = 8..11", "frozen outliers")


def _cells(row: dict[str, Any]) -> list[str]:
    share = [fmt(_get(row, "F7", "classifier_share", m), ".2f") for m in _NAMES]
    lam = [fmt(_get(row, "F9", "lambda1", m), ".4g") for m in _NAMES]
    return [str(row["width"]), row["verdicts"].get("F7", "NOT RUN"), " / ".join(share),
            fmt(_post_ours(row, "classifier's share", "BN"), ".2f"),
            f"{fmt(_get(row, 'F7', 'ratio_frozen'), '.1f')}x, {fmt(_get(row, 'F7', 'ratio_no_bn'), '.1f')}x",
            row["verdicts"].get("F9", "NOT RUN"), " / ".join(lam), f"{fmt(_get(row, 'F9', 'ratio'), '.1f')}x",
            _gap_cell(row), str(_get(row, "F9", "outliers", "frozen") if row.get("F9") else "-")]


def table(record: dict[str, Any]) -> str:
    """The markdown table: a row per width, then the post's."""
    p = record["post"]
    sq = p["F7"]["sq_norm_class0"]
    post_row = ["the post (width 64)", "", "-", fmt(p["F7"]["classifier_share_class0"]["bn"], ".3f"),
                f"{sq['frozen'] / sq['bn']:.1f}x, {sq['no_bn'] / sq['bn']:.1f}x (class 0)", "",
                " / ".join(fmt(p["F9"]["lambda1"][m], ".4g") for m in _NAMES), f"{fmt(p['F9']['ratio'], '.1f')}x",
                "not printed (9 outliers, then ~435)", str(p["F9"]["outliers"]["frozen"])]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in record["rows"]]
    return "\n".join([*lines, "| " + " | ".join(post_row) + " |"])


def markdown(record: dict[str, Any]) -> str:
    t = record["thresholds"]
    lines = [f"# Width trend of F7 and F9 (scale {record['scale']})", "",
             f"One reproduction per width of the batch-norm post's simple nets (`width_W/`, every other setting as "
             f"scale {record['scale']} says); status {record['status']}, created {record['created']}. "
             f"Thresholds: F7 classifier share BN >= {t['F7']['bn_share']:g}, frozen <= {t['F7']['frozen_share']:g}, "
             f"‖∇mean‖² ratios >= {t['F7']['ratio']:g}; F9 λ1 frozen/BN >= {t['F9']['ratio']:g}, frozen "
             f"λk/λk+1 >= {t['F9']['gap']:g} at some k in {min(t['F9']['gap_k'])}..{max(t['F9']['gap_k'])}. "
             "The post's shares are class 0's (F7 decides on the mean over classes; the class-0 share is the "
             "column beside it).", "", table(record), ""]
    errors = [f"width {r['width']}: {r['error']}" for r in record["rows"] if r.get("error")]
    lines += [f"Not finished: {'; '.join(errors)}.", ""] if errors else []
    lines += ([f"*{record['figure_problem']}*"] if record.get("figure_problem") else
              [f"![share and gap against width]({FIGURE_STEM}.png)"])
    return "\n".join(lines) + "\n"


def trend_figure(record: dict[str, Any]) -> Any:
    """Three panels against width: F7's classifier share (BN, frozen), F9's frozen gap, F9's lambda1 ratio;
    dashed: the post's value, dotted: the threshold. A width not measured has no point."""
    from matplotlib.figure import Figure

    from ..plotting import style

    style.apply()
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    fig.suptitle(f"F7 and F9 against the simple nets' width (scale {record['scale']})", fontsize=11)
    colors = style.color_map(_NAMES.values())
    rows, p, t = record["rows"], record["post"], record["thresholds"]
    widths = [r["width"] for r in rows]
    ax = axes[0]
    for m, limit in (("bn", t["F7"]["bn_share"]), ("frozen", t["F7"]["frozen_share"])):
        _line(ax, rows, lambda r, m=m: _get(r, "F7", "classifier_share", m), colors[_NAMES[m]], _NAMES[m])
        ax.axhline(p["F7"]["classifier_share_class0"][m], color=colors[_NAMES[m]], ls="--", lw=1,
                   label=f"the post, {_NAMES[m]} (class 0)")
        ax.axhline(limit, color=colors[_NAMES[m]], ls=":", lw=1.2, label=f"threshold, {_NAMES[m]}")
    ax.set(ylim=(0, 1), ylabel="classifier's share of ‖∇ mean logit‖²", title="F7: classifier share")
    ax = axes[1]
    _line(ax, rows, lambda r: _get(r, "F9", "gap"), colors["frozen BN"], "frozen BN, largest λk/λk+1, k = 8..11")
    ax.axhline(t["F9"]["gap"], color="black", ls=":", lw=1.2, label=f"threshold {t['F9']['gap']:g}")
    ax.set(ylabel="λk / λk+1", title="F9: frozen gap (the post prints no ratio)")
    ax.set_ylim(bottom=1)
    if not any(isinstance(_get(r, "F9", "gap"), (int, float)) for r in rows):
        tops = sorted({_get(r, "F9", "frozen_top_k") for r in rows if r.get("F9")})
        ax.text(0.5, 0.6, f"not measured: the frozen top-{'/'.join(map(str, tops)) or '?'} only", ha="center",
                transform=ax.transAxes)
    ax = axes[2]
    _line(ax, rows, lambda r: _get(r, "F9", "ratio"), colors["frozen BN"], "frozen / BN")
    ax.axhline(p["F9"]["ratio"], color="black", ls="--", lw=1, label=f"the post {p['F9']['ratio']:.1f}")
    ax.axhline(t["F9"]["ratio"], color="black", ls=":", lw=1.2, label=f"threshold {t['F9']['ratio']:g}")
    ax.set(ylabel="λ1 frozen / λ1 BN", title="F9: sharpness ratio")
    ax.set_ylim(bottom=0)
    for ax in axes:
        _width_axis(ax, widths)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, frameon=False, ncols=2)
    return fig


def _line(ax: Any, rows: list[dict[str, Any]], get: Any, color: Any, label: str) -> None:
    """One marker per width that measured the quantity, joined."""
    pts = [(r["width"], get(r)) for r in rows if isinstance(get(r), (int, float))]
    ax.plot([w for w, _ in pts], [y for _, y in pts], "o-", color=color, label=label, gid=label)


def _width_axis(ax: Any, widths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    if widths:
        ax.set_xlim(min(widths) / 1.2, max(widths) * 1.2)
    ax.set_xlabel("simple nets' width (the post: 64)")
