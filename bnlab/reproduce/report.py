"""The reproduction report: DIR/report.json (strict JSON, every number), DIR/figures/*.png (each finding's
figure, drawn in this process by `bnlab.reproduce.figures` from the same result files), DIR/report.md
(readable on a code host) and DIR/report.html (one self-contained file: figures inline as base64 PNG, no
outside resources).
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from ..findings.posts import POST6, POST7, posts_table
from ..findings.record import VERDICTS, fmt
from ..findings.registry import POST_NUMBERS
from ..io.jsonfile import read_json, write_json
from ..io.textfile import write_text
from .figures import FIGURES_DIR

TITLE = "Reproduction of *How to train your ResNet*, parts 6 (weight decay) and 7 (batch norm)"
SMOKE_WARNING = ("Scale smoke: these verdicts mean nothing. Smoke runs tiny nets on synthetic images for a few "
                 "steps to check that every stage and the report work; decide the findings at --scale cpu or full.")
SOURCES = ("Source codes: P = Page's posts (How to train your ResNet, parts 6 and 7) and their notebook; "
           "L = the literature the posts rest on (paper named); A = analysis: derivable or exactly simulable.")
VERDICT_LEGEND = ("Verdicts: PASS, every check holds; FAIL, a check does not; UNDECIDED, the setting is too small "
                  "to test the claim (too few steps, eigenpairs or layers; the reason says which); NOT RUN, not "
                  "requested or a stage it needs failed.")


def draw_figures(out: Path) -> str | None:
    """Draw every decided finding's figure into OUT/figures from OUT/report.json (in this process); returns a
    one-line problem, or None when every figure drew."""
    from .figures import draw_report_figures

    try:
        return draw_report_figures(out, read_json(out / "report.json", "report"))
    except Exception as e:  # a figure failure is one line in the report, never a crash of the reproduction
        return f"figures: {' '.join(str(e).split())[:200] or type(e).__name__}"


def finish_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its table of the posts' numbers beside ours (from its findings' values)."""
    record["posts"] = posts_table(record.get("findings", []), POST_NUMBERS)
    return record


def write_report(result: Any, out: Path) -> list[Path]:
    record = finish_record(result.record)
    paths = [write_json(out / "report.json", record)]
    problem = draw_figures(out) if result.draw_figures else "figures not drawn (--no-figures)"
    if getattr(result, "started", None) is not None:  # "took" spans the figures too, as the closing stderr line
        record["provenance"]["wall_time_total"] = time.perf_counter() - result.started
    for rec, frec in zip(result.findings, record["findings"]):
        fig = Path(FIGURES_DIR) / f"{rec.id}.png"
        rec.figure = frec["figure"] = str(fig) if (out / fig).is_file() else None
    record["figures_problem"] = problem
    paths.append(write_json(out / "report.json", record))
    md = markdown(record)
    write_text(out / "report.md", md)
    write_text(out / "report.html", to_html(record, out))
    return [*paths, out / "report.md", out / "report.html"]


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def hms(seconds: float | None) -> str:
    """A duration for people: 45s, 3m07s, 1h02m."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _header(record: dict[str, Any]) -> list[str]:
    p = record["provenance"]
    v = p["versions"]
    s = record["summary"]
    warning = [f"**{SMOKE_WARNING}**", ""] if record["scale"] == "smoke" else []
    return [
        *warning,
        f"Scale **{record['scale']}**; requested: {', '.join(record['requested'])}. "
        f"Verdicts: {', '.join(f'{s.get(k, 0)} {k}' for k in VERDICTS)}.",
        "",
        f"bnlab {v['bnlab']}, torch {v['torch']}, numpy {v['numpy']}, scipy {v['scipy']}, Python {v['python']}; "
        f"device {p['device']} ({p['device_name']}), {p['cpu_count']} CPU cores, {p['jobs']} worker(s); "
        f"created {p['created']}; this invocation took {hms(p['wall_time_total'])} (start to figures drawn; "
        f"stages run now: "
        f"{hms(p['wall_time_stages_run'])} of worker time; all stages of the report, reused ones included: "
        f"{hms(p['wall_time_stages_all'])}).",
        "",
        f"Data: {p['data']['folder'] or 'synthetic'} (fingerprint {str(p['data']['fingerprint'])[:16]}). "
        f"Seeds: {p['seeds']}.",
        *_budget_lines(p.get("eigenpairs")), *_parts_lines(record.get("parts")),
        *_override_lines(record.get("overrides")),
    ]


def _override_lines(overrides: dict[str, Any] | None) -> list[str]:
    if not overrides:
        return []
    return ["", "Scale settings replaced (the rest as the scale says): "
            + "; ".join(f"{k} = {v}" for k, v in overrides.items()) + "."]


def _budget_lines(budget: dict[str, Any] | None) -> list[str]:
    if not budget:
        return []
    return ["", "Eigenpairs computed per curvature stage (the most its findings read; projected_M: the projected "
            "Hessian of outstats_M): " + "; ".join(
                f"{stage} {e['k']} ({', '.join(f'{fid} {k}' for fid, k in e['for'].items())})"
                for stage, e in budget.items()) + "."]


def _parts_lines(parts: list[dict[str, Any]] | None) -> list[str]:
    if not parts:
        return []
    return ["", f"Merged from {len(parts)} parts: " + "; ".join(
        f"{q['folder']} ({', '.join(q.get('requested') or [])}; {q.get('device')}, created {q.get('created')}, took "
        f"{hms(q.get('wall_time_total'))})" for q in parts) + "."]


POSTS_INTRO = (f"Every number the posts print ([weight decay]({POST6}), [batch norm]({POST7})) beside ours at "
               "this scale, and ours / the post's (a range is compared with its midpoint). Our nets, data and "
               "sample are the scale's, not the posts' (see each stage's setting): ratios far from 1 at cpu scale "
               "say how far a small net is from the post's, not that a check failed.")


def _num(x: Any) -> str:
    return fmt(x, ".3g") if x is not None else "-"


def _sample_md(f: dict[str, Any]) -> str:
    return f" ({_cell(f['sample'])})" if f.get("sample") else ""


def _posts_md(record: dict[str, Any]) -> list[str]:
    rows = record.get("posts") or []
    if not rows:
        return []
    lines = ["", "## The posts beside us", "", POSTS_INTRO, "",
             "| quantity | model | the post | ours | ours / post | finding |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_cell(r['quantity'])} | {r['model'] or '-'} | [{_cell(r['source_text'])}]({r['link']}) | "
                     f"{_num(r['ours'])} | {_num(r['ratio'])} | [{r['finding']}](#{r['finding'].lower()}) |")
    return lines


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# {TITLE}", "", *_header(record), "", "## Verdicts", "", SOURCES, "", VERDICT_LEGEND, "",
             "| id | claim | source | source's number | measured | threshold | verdict |",
             "|---|---|---|---|---|---|---|"]
    for f in record["findings"]:
        lines.append(f"| [{f['id']}](#{f['id'].lower()}) | {_cell(f['title'])} | {_cell(f['source'])} | "
                     f"{_cell(f['source_number'])} | {_cell(f['measured'])} | {_cell(f['threshold'])} | "
                     f"**{f['verdict']}**{_sample_md(f)} |")
    if record.get("figures_problem"):
        lines += ["", f"*{record['figures_problem']}*"]
    lines += _posts_md(record)
    for f in record["findings"]:
        lines += ["", f"## {f['id']}", "", f"**{f['title']}: {f['verdict']}.** {f['reason']}", "",
                  f"- Claim: {f['claim']}", f"- Source: {f['source']}; the source's number: {f['source_number']}",
                  f"- Threshold: {f['threshold']}", f"- Measured: {f['measured']}"]
        for note in f.get("notes", []):
            lines.append(f"- Note: {note}")
        if f.get("sample"):
            lines.append(f"- Sample check: {f['sample']}")
        if f.get("figure"):
            lines += ["", f"![{f['id']}]({f['figure']})"]
        stages = (f.get("setting") or {}).get("stages", {})
        if stages:
            lines += ["", f"Setting (scale {f['setting']['scale']}):", ""]
            lines += [f"- `{n}` ({s['folder']}): {s['summary']}" for n, s in stages.items()]
    lines += ["", "## Stages", "", "| stage | kind | status | wall time | folder |", "|---|---|---|---|---|"]
    for s in record["stages"]:
        err = f" ({_cell(s['error'])})" if s.get("error") else ""
        lines.append(f"| {s['name']} | {s['kind']} | {s['status']}{err} | {hms(s['wall_time'])} | {s['folder']} |")
    ck = record["provenance"]["checkpoint_sha256"]
    if ck:
        lines += ["", "Checkpoints (sha256): " + "; ".join(f"{n} {h[:16]}" for n, h in ck.items())]
    lines += ["", "Every number above is in report.json; every stage folder holds its settings and outputs "
              "(stage.json) and the files of the bnlab command that made them.", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.86em}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f2f2f2}.PASS{background:#d9f2d9;font-weight:bold}.FAIL{background:#f8d7d7;font-weight:bold}
.NOTRUN{background:#eee;font-weight:bold}
.UNDECIDED{background:#fcefc7;font-weight:bold}.warning{background:#fcefc7;padding:0.6em;font-weight:bold}
img{max-width:100%;border:1px solid #ddd}code{background:#f5f5f5}
h2{border-bottom:1px solid #ddd;padding-bottom:3px}"""


def _img(out: Path, rel: str | None) -> str:
    if not rel or not (out / rel).is_file():
        return ""
    data = base64.b64encode((out / rel).read_bytes()).decode()
    return f'<p><img alt="figure" src="data:image/png;base64,{data}"></p>'


def _posts_html(record: dict[str, Any]) -> str:
    e = html.escape
    rows = record.get("posts") or []
    if not rows:
        return ""
    # the posts' addresses as text: the page stays self-contained (nothing it shows or links is fetched)
    intro = e(POSTS_INTRO.replace(f"[weight decay]({POST6})", f"weight decay: {POST6}")
              .replace(f"[batch norm]({POST7})", f"batch norm: {POST7}"))
    cells = "".join(
        f"<tr><td>{e(r['quantity'])}</td><td>{e(r['model'] or '-')}</td><td>{e(r['source_text'])}</td>"
        f"<td>{e(_num(r['ours']))}</td><td>{e(_num(r['ratio']))}</td>"
        f"<td><a href='#{e(r['finding'])}'>{e(r['finding'])}</a></td></tr>" for r in rows)
    return (f"<h2>The posts beside us</h2><p>{intro}</p><table><tr><th>quantity</th><th>model</th><th>the post</th>"
            f"<th>ours</th><th>ours / post</th><th>finding</th></tr>{cells}</table>")


def to_html(record: dict[str, Any], out: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(TITLE.replace('*', ''))}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(TITLE.replace('*', ''))}</h1>"]
    for line in _header(record):
        if line:
            cls = " class='warning'" if line.strip("*") == SMOKE_WARNING else ""
            parts.append(f"<p{cls}>{e(line).replace('**', '')}</p>")
    parts.append(f"<h2>Verdicts</h2><p>{e(SOURCES)}</p><p>{e(VERDICT_LEGEND)}</p>")
    parts.append("<table><tr><th>id</th><th>claim</th><th>source</th><th>source's number</th>"
                 "<th>measured</th><th>threshold</th><th>verdict</th></tr>")
    for f in record["findings"]:
        parts.append(f"<tr><td><a href='#{e(f['id'])}'>{e(f['id'])}</a></td><td>{e(f['title'])}</td>"
                     f"<td>{e(f['source'])}</td><td>{e(f['source_number'])}</td><td>{e(f['measured'])}</td>"
                     f"<td>{e(f['threshold'])}</td>"
                     f"<td class='{f['verdict'].replace(' ', '')}'>{e(f['verdict'])}"
                     f"{'<br>' + e(f['sample']) if f.get('sample') else ''}</td></tr>")
    parts.append("</table>")
    parts.append(_posts_html(record))
    if record.get("figures_problem"):
        parts.append(f"<p><em>{e(record['figures_problem'])}</em></p>")
    for f in record["findings"]:
        parts.append(f"<h2 id='{e(f['id'])}'>{e(f['id'])}: {e(f['title'])} "
                     f"<span class='{f['verdict'].replace(' ', '')}'>{e(f['verdict'])}</span></h2>")
        parts.append(f"<p>{e(f['reason'])}</p><ul><li>Claim: {e(f['claim'])}</li><li>Source: {e(f['source'])}; "
                     f"the source's number: {e(f['source_number'])}</li><li>Threshold: {e(f['threshold'])}</li>"
                     f"<li>Measured: {e(f['measured'])}</li>"
                     + "".join(f"<li>Note: {e(n)}</li>" for n in f.get("notes", [])) + "</ul>")
        parts.append(_img(out, f.get("figure")))
        stages = (f.get("setting") or {}).get("stages", {})
        if stages:
            parts.append(f"<p>Setting (scale {e(f['setting']['scale'])}):</p><ul>" + "".join(
                f"<li><code>{e(n)}</code> ({e(s['folder'])}): {e(s['summary'])}</li>" for n, s in stages.items())
                + "</ul>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>kind</th><th>status</th><th>wall time</th>"
                 "<th>folder</th></tr>")
    for s in record["stages"]:
        parts.append(f"<tr><td>{e(s['name'])}</td><td>{e(s['kind'])}</td><td>{e(s['status'])}"
                     f"{' (' + e(s['error']) + ')' if s.get('error') else ''}</td><td>{hms(s['wall_time'])}</td>"
                     f"<td>{e(s['folder'])}</td></tr>")
    parts.append("</table>")
    ck = record["provenance"]["checkpoint_sha256"]
    if ck:
        parts.append("<p>Checkpoints (sha256): " + "; ".join(f"{e(n)} <code>{h[:16]}</code>" for n, h in ck.items())
                     + "</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
