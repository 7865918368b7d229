"""Output folders of results: `Result.write(folder)` creates its folder, as `--out` does."""
from __future__ import annotations

import os
from pathlib import Path


def result_folder(out: str | os.PathLike) -> Path:
    """`out` as a Path, created with its parents if missing (a notebook's `h.write("results/x")` just works)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
