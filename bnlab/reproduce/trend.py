"""The width trend of the batch-norm post's curvature findings F7 and F9: how their measured quantities move
toward the post's as the simple nets widen.

`width_trend(out, widths, ...)` runs, per width W, an ordinary reproduction of F7 and F9 in OUT/width_W (the
simple nets at width W, every other setting as the scale says; rerunning continues it, a finished width is
all cached stages), then collects per width what each finding decides on, its verdict and the post's
numbers beside them, from that folder's report.json: OUT/width_trend.json, width_trend.md (a table) and
width_trend.png (`bnlab.reproduce.trend_report`).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from .. import validate as check
from ..data import cifar
from ..errors import BnlabError
from ..findings import f7_mean_gradients as f7
from ..findings import f9_sharpness as f9
from ..findings.common import MODELS
from ..findings.registry import BY_ID
from ..io.jsonfile import read_json, write_json
from ..models import MAX_WIDTH
from ..rundir import claim_out_dir, output_path
from .plan import build_plan, needed_stages
from .run import ReproduceOptions, _critical_path, _Log, _now, resolve_targets, run_reproduce

TREND_FINDINGS = ("F7", "F9")  # what the trend reads; other findings have their own widths (or none)
TREND_FILE = "width_trend.json"
TREND_FORMAT = "bnlab-width-trend"
TREND_VERSION = 1


def width_folder(out: str | Path, width: int) -> Path:
    """The reproduction folder of one width."""
    return Path(out) / f"width_{width}"


def parse_widths(text: str) -> tuple[int, ...]:
    """"8,16,32" -> (8, 16, 32), checked (`check_widths`)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        raise BnlabError(f"--widths must be comma-separated whole numbers such as 8,16,32, got {text!r}") from None
    return check_widths(widths)


def check_widths(widths: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The widths in increasing order; refused (one line) when empty, repeated or outside 1..MAX_WIDTH."""
    widths = tuple(widths)
    if not widths:
        raise BnlabError("--widths needs at least one width, e.g. --widths 8,16,32")
    for w in widths:
        check.integer("--widths", w, 1, MAX_WIDTH)
    repeated = sorted({w for w in widths if widths.count(w) > 1})
    if repeated:
        raise BnlabError(f"--widths names {', '.join(map(str, repeated))} more than once; give each width once")
    return tuple(sorted(widths))


def trend_findings(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The findings of a trend (default F7 and F9); anything else is refused in one line."""
    chosen = resolve_targets(targets) if targets else TREND_FINDINGS
    other = [f for f in chosen if f not in TREND_FINDINGS]
    if other:
        raise BnlabError(f"--widths traces {' and '.join(TREND_FINDINGS)} only (the simple nets' width); "
                         f"got {', '.join(other)}: run those without --widths")
    return chosen


@dataclass
class TrendResult:
    record: dict[str, Any]  # what width_trend.json holds

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.record["rows"]


def width_trend(out: str | Path, widths: tuple[int, ...] | list[int], *, findings: tuple[str, ...] = TREND_FINDINGS,
                scale: str = "cpu", data_dir: str | None = None, device: str = "auto", threads: int = 1,
                jobs: int | None = None, figures: bool = True, force: bool = False, quiet: bool = False,
                stream: TextIO | None = None) -> TrendResult:
    """Run (or continue) F7/F9's reproduction at each width in OUT/width_W, then write OUT/width_trend.json,
    .md and .png. `figures` is the per-width reports' (the trend's own figure is always drawn)."""
    from .trend_report import write_trend

    widths, findings = check_widths(widths), trend_findings(tuple(findings))
    base = ReproduceOptions(targets=findings, scale=scale, data_dir=data_dir, device=device, jobs=jobs,
                            figures=figures, threads=threads)
    base.validate()  # every refusal before OUT is touched
    out = output_path(out)
    resume = _is_trend(out, scale) and not force
    say = _Log(None if quiet else (stream or sys.stderr), prefix="trend: ").line
    inputs = [] if scale == "smoke" else [("data folder", p) for p in cifar.input_paths(data_dir)]
    errors: dict[int, str] = {}
    with claim_out_dir(out, force=force, resume=resume, inputs=inputs):
        costs = trend_costs(base, widths)
        say(f"width trend of {' '.join(findings)} at scale {scale}: widths {', '.join(map(str, widths))}; stage cost "
            f"model (one idle core) {', '.join(f'{w}: {_minutes(c)}' for w, c in costs.items())}")
        write_json(out / TREND_FILE, _record(scale, findings, widths, [], status="running"))
        for i, w in enumerate(widths, 1):
            say(f"width {w} ({i}/{len(widths)}): {width_folder(out, w)}")
            try:
                run_reproduce(replace(base, simple_width=w), width_folder(out, w), quiet=quiet, stream=stream)
            except BnlabError as e:  # a failed stage: the other widths still run; its report says what failed
                errors[w] = str(e)
                say(f"width {w}: {e}")
        rows = [trend_row(w, width_folder(out, w), errors.get(w)) for w in widths]
        for r in rows:
            say(f"width {r['width']}: " + "; ".join(f"{fid} {r['verdicts'].get(fid, 'NOT RUN')}" for fid in findings))
        result = TrendResult(_record(scale, findings, widths, rows, status="failed" if errors else "done"))
        for path in write_trend(result.record, out):
            say(f"wrote {path}")
    if errors:
        raise BnlabError(f"width(s) {', '.join(map(str, errors))} did not finish ({'; '.join(errors.values())}); "
                         "rerun the same command to retry them")
    return result


def _record(scale: str, findings: tuple[str, ...], widths: tuple[int, ...], rows: list[dict[str, Any]],
            status: str) -> dict[str, Any]:
    return {"format": TREND_FORMAT, "version": TREND_VERSION, "scale": scale, "findings": list(findings),
            "widths": list(widths), "status": status, "created": _now(),
            "post": post_values(), "thresholds": thresholds(), "rows": rows}


def _is_trend(out: Path, scale: str) -> bool:
    """Whether OUT holds a width trend to continue; one of another scale is refused."""
    try:
        rec = read_json(out / TREND_FILE, "width trend")
    except BnlabError:
        return False
    if not isinstance(rec, dict) or rec.get("format") != TREND_FORMAT:
        return False
    if rec.get("scale") != scale:
        raise BnlabError(f"{out} holds a width trend at scale {rec.get('scale')}, not {scale}; choose another --out "
                         "or pass --force to empty it")
    return True


def trend_costs(base: ReproduceOptions, widths: tuple[int, ...]) -> dict[int, float]:
    """Per width, the stage cost model's seconds on one idle core for the stages not yet finished anywhere (all
    of them: the model does not know the folder), as a wall time on `base.jobs` workers (default 1)."""
    out = {}
    for w in widths:
        opts = replace(base, simple_width=w)
        plan = build_plan(opts.scale, opts.settings())
        names = needed_stages(plan, opts.findings)
        total = sum(plan[n].cost for n in names)
        out[w] = max(total / (opts.jobs or 1), max(_critical_path(plan, names).values()))
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


# -- what is collected per width -----------------------------------------------------------------------

def thresholds() -> dict[str, Any]:
    """The findings' own constants (the same at every width)."""
    return {"F7": {"ratio": f7.F7_RATIO, "bn_share": f7.F7_BN_SHARE, "frozen_share": f7.F7_FROZEN_SHARE},
            "F9": {"ratio": f9.F9_RATIO, "gap": f9.F9_GAP, "gap_k": list(f9.F9_GAP_K)}}


def _post(fid: str, quantity: str, model: str) -> float | None:
    """The post's number of `quantity` (its first words) for `model`, as the finding declares it."""
    for p in BY_ID[fid].posts:
        if p.quantity.startswith(quantity) and p.model == model:
            return p.source
    raise KeyError(f"{fid} declares no post number {quantity!r} of {model!r}")  # a renamed PostNumber


def post_values() -> dict[str, Any]:
    """The post's values of what the trend plots (its class-0 shares; lambda1 ratio from its lambda1s)."""
    names = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}
    lam = {m: _post("F9", "lambda1", names[m]) for m in MODELS}
    return {"F7": {"classifier_share_class0": {m: _post("F7", "classifier's share", names[m]) for m in MODELS},
                   "sq_norm_class0": {m: _post("F7", "‖∇ mean logit 0‖²", names[m]) for m in MODELS}},
            "F9": {"lambda1": lam, "ratio": lam["frozen"] / lam["bn"],
                   "outliers": {m: _post("F9", "outlier count", names[m]) for m in MODELS},
                   "gap": None}}  # the post prints no gap ratio (9 outliers, then ~435)


def _f7(values: dict[str, Any]) -> dict[str, Any]:
    return {"classifier_share": values["classifier_share"], "sq_norm": values["sq_norm"],
            "ratio_frozen": values["ratio_frozen"], "ratio_no_bn": values["ratio_no_bn"]}


def _f9(values: dict[str, Any]) -> dict[str, Any]:
    ev = values["eigenvalues"]
    return {"lambda1": {m: (ev[m][0] if ev.get(m) else None) for m in MODELS}, "ratio": _finite(values["ratio"]),
            "gaps": {str(k): g for k, g in values["gaps"].items()}, "gap": _finite(values["gap"]),
            "gap_k": values["gap_k"], "frozen_top_k": len(ev["frozen"]), "outliers": values["outliers"]}


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def trend_row(width: int, folder: Path, error: str | None = None) -> dict[str, Any]:
    """One width's row, from its reproduction folder's report.json (what F7 and F9 decided on there)."""
    row: dict[str, Any] = {"width": width, "folder": folder.name, "error": error, "verdicts": {}, "reasons": {},
                           "F7": None, "F9": None, "posts": []}
    try:
        rep = read_json(folder / "report.json", "reproduction report")
    except BnlabError as e:
        row["error"] = error or str(e)
        return row
    for f in rep["findings"]:
        if f["id"] in TREND_FINDINGS:
            row["verdicts"][f["id"]], row["reasons"][f["id"]] = f["verdict"], f["reason"]
            if f["verdict"] != "NOT RUN":
                row[f["id"]] = (_f7 if f["id"] == "F7" else _f9)(f["values"])
    row["posts"] = [p for p in rep.get("posts", []) if p["finding"] in TREND_FINDINGS]
    row["simple_width"] = rep.get("provenance", {}).get("scale_settings", {}).get("bn_post", {}).get("width")
    return row
