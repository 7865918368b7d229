"""The stage cache of a reproduction folder: every stage's outputs live in DIR/stages/NAME-KEY/, KEY the
hash of the stage's kind, settings, the data it reads and its inputs' keys. So

- a finished stage (its ``stage.json`` written last, atomically) is reused by any later run that asks for
  the same thing, whatever else changed;
- a changed setting gives a new key, and so reruns that stage and everything downstream of it, nothing else;
- a stage killed half-way has a folder without ``stage.json``: it is redone (a training run resumes from
  its last committed epoch).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import BnlabError
from ..io.jsonfile import read_json, to_jsonable
from .kinds import KINDS, OUT
from .plan import Stage

STAGE_FILE = "stage.json"
STAGE_FORMAT = "bnlab-reproduce-stage"
def digest(obj: Any) -> str:
    """sha256 of an object's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(folder: Path) -> str:
    """Identity of a CIFAR-10 folder without reading all of it: names, sizes, first and last 64 KiB of
    each batch file. Moving the folder keeps the cache; different images invalidate it."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.name.startswith(("data_batch", "test_batch"))):
        p = folder / name
        size = p.stat().st_size
        h.update(f"{name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 16))
            f.seek(max(0, size - (1 << 16)))
            h.update(f.read())
    return h.hexdigest()


def stage_keys(plan: dict[str, Stage], names: list[str], context: dict[str, Any]) -> dict[str, str]:
    """Key of every named stage (deps first). `context` holds what outside the settings changes a stage's
    result: the data's fingerprint and the device type (CUDA trains in bf16)."""
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            st = plan[name]
            keys[name] = digest({"kind": st.kind, "version": KINDS[st.kind].version, "settings": st.settings,
                                 "deps": {role: key(dep) for role, dep in sorted(st.deps.items())},
                                 "context": context})[:12]
        return keys[name]

    for n in names:
        key(n)
    return keys


def stage_dir(root: Path, name: str, key: str) -> Path:
    return root / "stages" / f"{name}-{key}"


def finished(folder: Path, key: str) -> dict[str, Any] | None:
    """The stage record of a finished stage in `folder`, or None (never started, killed before its end, or
    its outputs deleted or changed since: then it is redone)."""
    try:
        rec = read_json(folder / STAGE_FILE, "stage record")
    except BnlabError:
        return None
    if not isinstance(rec, dict) or rec.get("format") != STAGE_FORMAT or rec.get("key") != key:
        return None
    out = folder / OUT
    files = rec.get("files")
    if not out.is_dir() or (files is not None and not _files_intact(out, files)):
        return None
    return rec


def _files_intact(out: Path, files: Any) -> bool:
    if not isinstance(files, dict):
        return False
    for name, size in files.items():
        p = out / str(name)
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True
