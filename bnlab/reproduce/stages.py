"""Running one stage: its kind (`bnlab.reproduce.kinds`) runs it into the stage's ``out`` folder.

`run_stage` takes and returns plain data, so it runs the same in this process or in a worker process.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .kinds import OUT, kind

__all__ = ["OUT", "check_stage", "output_files", "run_stage"]


def run_stage(kind_name: str, settings: dict[str, Any], folder: str, inputs: dict[str, str],
              env: dict[str, Any]) -> dict[str, Any]:
    """Run one stage into FOLDER/out; returns its outputs summary (for stage.json) and wall time.

    inputs: role -> the `out` folder of the stage it names. env: data_dir, device, threads, quiet.
    """
    before = torch.get_num_threads()
    if env.get("threads"):  # fixed per stage (part of its key), so its result does not depend on -j
        torch.set_num_threads(int(env["threads"]))
    try:
        t0 = time.perf_counter()
        out = Path(folder) / OUT
        outputs = kind(kind_name).run(settings, out, {k: Path(v) for k, v in inputs.items()}, env)
        return {"outputs": outputs, "wall_time": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                "files": output_files(out)}
    finally:
        torch.set_num_threads(before)


def output_files(out: Path) -> dict[str, int]:
    """Every file a stage wrote (relative path -> size; lock and temp files left out), for its record:
    a cached stage whose files were deleted or changed since is redone."""
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def check_stage(kind_name: str, settings: dict[str, Any], stage: str | None = None) -> None:
    """Refuse (BnlabError naming `stage` and the field) settings that are not the kind's `settings_type` or that
    the stage's command would refuse, before anything runs."""
    kind(kind_name).check(settings, stage)
