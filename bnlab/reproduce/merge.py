"""`bnlab reproduce --merge DIR... --out OUT`: one report from parts run separately (the weight-decay group on
one machine, the batch-norm group on another). A part is what its folder's report needs, without stages or
checkpoints: report.json and figures/*.png (`part_files`).

Parts of different scales, bnlab versions or data are refused, and so are parts that decided the same finding
differently (one line each); a finding decided in one part and not run in another takes the decided record.
"""
from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import BnlabError
from ..findings.record import NOT_RUN, VERDICTS
from ..findings.registry import IDS
from ..io.jsonfile import read_json, write_json
from ..io.textfile import write_text
from .figures import FIGURES_DIR

REPORT = "report.json"


def part_files(folder: Path) -> list[Path]:
    """The files of a part's record: report.json and the figures' PNGs (what --merge reads)."""
    folder = Path(folder)
    return [folder / REPORT, *sorted((folder / FIGURES_DIR).glob("*.png"))]


def read_part(folder: Path) -> dict[str, Any]:
    """The report record of a part (a reproduction folder, or the folder of its record), checked."""
    from .run import REPORT_FORMAT

    path = Path(folder) / REPORT
    if not path.is_file():
        raise BnlabError(f"{folder} holds no {REPORT} (give reproduction folders, or folders of their records)")
    rec = read_json(path, "reproduction report")
    if not isinstance(rec, dict) or rec.get("format") != REPORT_FORMAT or not isinstance(rec.get("findings"), list):
        raise BnlabError(f"{path} is not a bnlab reproduction report")
    return rec


def _same(parts: list[tuple[Path, dict[str, Any]]], what: str, get: Any) -> None:
    seen = {str(folder): get(rec) for folder, rec in parts}
    if len({repr(v) for v in seen.values()}) > 1:
        raise BnlabError(f"parts of different {what} ({'; '.join(f'{f}: {v}' for f, v in seen.items())}); "
                         f"merge parts of one {what.rstrip('s')}")


def _check(parts: list[tuple[Path, dict[str, Any]]]) -> None:
    _same(parts, "scales", lambda r: r.get("scale"))
    _same(parts, "bnlab versions", lambda r: (r.get("version"), r.get("provenance", {}).get("versions", {})
                                              .get("bnlab")))
    _same(parts, "data", lambda r: r.get("provenance", {}).get("data", {}).get("fingerprint"))
    _same(parts, "scale settings", lambda r: r.get("overrides") or {})  # e.g. two widths of the width trend
    decided: dict[str, tuple[str, str]] = {}
    for folder, rec in parts:
        for f in rec["findings"]:
            if f.get("verdict") == NOT_RUN:
                continue
            if f["id"] in decided and decided[f["id"]][1] != f["verdict"]:
                other, verdict = decided[f["id"]]
                raise BnlabError(f"{f['id']} decided differently by the parts: {verdict} in {other}, "
                                 f"{f['verdict']} in {folder}")
            decided.setdefault(f["id"], (str(folder), f["verdict"]))


def _findings(parts: list[tuple[Path, dict[str, Any]]], out: Path) -> list[dict[str, Any]]:
    """Per finding (report order) the record of the part that decided it, its figure copied into OUT."""
    chosen: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder, rec in parts:
        for f in rec["findings"]:
            if f["id"] not in chosen or (chosen[f["id"]][1]["verdict"] == NOT_RUN and f["verdict"] != NOT_RUN):
                chosen[f["id"]] = (folder, f)
    findings = []
    for fid in [i for i in IDS if i in chosen] + [i for i in chosen if i not in IDS]:
        folder, f = chosen[fid]
        f = {**f, "part": str(folder)}
        fig = f.get("figure")
        if fig and (folder / fig).is_file():
            (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / fig, out / FIGURES_DIR / Path(fig).name)
            f["figure"] = f"{FIGURES_DIR}/{Path(fig).name}"
        else:
            f["figure"] = None
        findings.append(f)
    return findings


def _provenance(parts: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    provs = [rec.get("provenance", {}) for _, rec in parts]

    def joined(key: str) -> str:
        return "; ".join(dict.fromkeys(str(p.get(key)) for p in provs))

    def total(key: str) -> float:
        return sum(p.get(key) or 0 for p in provs)

    checkpoints: dict[str, str] = {}
    for p in provs:
        for name, h in (p.get("checkpoint_sha256") or {}).items():
            checkpoints[name if checkpoints.get(name, h) == h else f"{name} ({len(checkpoints)})"] = h
    first = provs[0]
    return {**first, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": joined("device"), "device_name": joined("device_name"), "jobs": joined("jobs"),
            "checkpoint_sha256": checkpoints, "wall_time_total": total("wall_time_total"),
            "wall_time_stages_run": total("wall_time_stages_run"),
            "wall_time_stages_all": total("wall_time_stages_all"),
            "command": " ".join(sys.argv), "load_average": None}


def merge_records(parts: list[tuple[Path, dict[str, Any]]], out: Path) -> dict[str, Any]:
    """The merged report record of the checked `parts` (figures copied into OUT/figures)."""
    findings = _findings(parts, out)
    first = parts[0][1]
    requested = [i for i in IDS if any(i in rec.get("requested", []) for _, rec in parts)]
    return {
        "format": first["format"], "version": first["version"], "scale": first["scale"], "requested": requested,
        "summary": {v: sum(f["verdict"] == v for f in findings) for v in VERDICTS}, "findings": findings,
        "stages": [{**s, "part": str(folder)} for folder, rec in parts for s in rec.get("stages", [])],
        "provenance": _provenance(parts),
        "parts": [{"folder": str(folder), "created": rec.get("provenance", {}).get("created"),
                   "device": rec.get("provenance", {}).get("device_name"), "requested": rec.get("requested"),
                   "summary": rec.get("summary"), "wall_time_total": rec.get("provenance", {}).get("wall_time_total")}
                  for folder, rec in parts],
        "figures_problem": "; ".join(p for _, rec in parts if (p := rec.get("figures_problem"))) or None,
    }


def checked_parts(folders: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each part's report record, refused (one line) unless they belong together."""
    if not folders:
        raise BnlabError("--merge needs the folders of the parts to merge")
    parts = [(Path(f), read_part(Path(f))) for f in folders]
    _check(parts)
    return parts


def merge_reports(folders: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge the parts into OUT/report.json, report.md, report.html and OUT/figures; returns the record."""
    from ..io.folder import result_folder
    from ..rundir import output_path
    from .report import finish_record, markdown, to_html

    target = output_path(out)
    if target.resolve() in {Path(f).resolve() for f in folders}:
        raise BnlabError(f"--out {target} is one of the parts; merge into a new folder")
    parts = checked_parts([Path(f) for f in folders])  # every refusal comes before OUT is made
    out = result_folder(target)
    record = finish_record(merge_records(parts, out))
    write_json(out / REPORT, record)
    write_text(out / "report.md", markdown(record))
    write_text(out / "report.html", to_html(record, out))
    return record
