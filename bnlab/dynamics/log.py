"""Reading a run's dynamics log (``dynamics.csv``, ``dynamics_channels.csv``), also while it is written.

The trainer appends rows and flushes at least once per epoch, so a live file may end in a partial
line: any line without its newline, or with the wrong number of fields, is dropped. Parsing uses
the C csv reader and column-wise numpy conversion (no Python loop over rows).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..errors import BnlabError
from ..io.textfile import write_text

# The schema of the log files. The trainer writes them (`bnlab.dynamics.tracker`), everything else
# reads them through `read_table`/`read_run`.
COLUMNS = ("step", "epoch", "lr", "loss", "acc", "param", "numel", "w_norm", "g_norm", "dw_norm",
           "rel_step", "cos_wg", "angle")
CHANNEL_COLUMNS = ("step", "param", "channel", "w_norm", "g_norm", "dw_norm", "cos_wg", "angle")
GRADCORR_FILE = "dynamics_gradcorr.csv"


def gradcorr_columns(lags: int) -> tuple[str, ...]:
    """The header of dynamics_gradcorr.csv: cos(g_t, g_{t-k}) per tensor for k = 1..lags."""
    return ("step", "param", *(f"gcos_{k}" for k in range(1, lags + 1)))


NUMERIC = tuple(c for c in COLUMNS + CHANNEL_COLUMNS if c != "param")
REQUIRED = ("step", "lr", "param", "w_norm", "g_norm", "dw_norm", "rel_step", "cos_wg", "angle")
REQUIRED_CHANNELS = CHANNEL_COLUMNS


@dataclass
class Table:
    """Columns of a long-format CSV: numeric ones as float arrays, `param` as a str array."""

    columns: dict[str, np.ndarray]
    path: Path
    param_order: list[str] = field(default_factory=list)  # order of first appearance: the model's

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(self.columns["param"])

    def params(self) -> list[str]:
        """Parameter names in the model's order (first appearance in the log)."""
        present = set(np.unique(self.columns["param"]).tolist())
        return [p for p in self.param_order if p in present]

    def select(self, mask: np.ndarray) -> Table:
        return Table({k: v[mask] for k, v in self.columns.items()}, self.path, self.param_order)


def read_table(path: Path, required: tuple[str, ...]) -> Table:
    """Parse a (possibly still growing) long-format CSV; rows sorted by step, one row per key kept."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BnlabError(f"cannot read {path} ({e.strerror})") from None
    text = raw.decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop a partially written last line
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise BnlabError(f"{path} is empty (the run has not logged a step yet)")
    header = rows[0]
    missing = [c for c in required if c not in header]
    if missing:
        raise BnlabError(f"{path} is not a bnlab dynamics log (no column(s) {', '.join(missing)})")
    body = [r for r in rows[1:] if len(r) == len(header)]
    if not body:
        raise BnlabError(f"{path} has no complete rows yet (the run has not logged a step)")
    cols = dict(zip(header, map(np.array, zip(*body))))
    out: dict[str, np.ndarray] = {}
    for name, col in cols.items():
        if name == "param":
            out[name] = col.astype(str)
        elif name in NUMERIC or name.startswith("gcos_"):
            try:
                out[name] = np.where(col == "", "nan", col).astype(float)
            except ValueError:
                raise BnlabError(f"{path}: column {name} holds non-numbers") from None
    names, first = np.unique(out["param"], return_index=True)
    return _dedupe(Table(out, path, [str(n) for n in names[np.argsort(first)]]))


def _dedupe(table: Table) -> Table:
    """Sort by (param, channel, step) and keep the last row written for each key.

    A resumed run re-logs the steps after its last checkpoint; the later rows are the ones that
    belong to the run's actual history.
    """
    keys = [table["step"]]
    if "channel" in table:
        keys.append(table["channel"])
    _, param_code = np.unique(table["param"], return_inverse=True)
    order = np.lexsort((np.arange(len(table)), *keys, param_code))
    codes = [param_code[order]] + [k[order] for k in keys[::-1]]
    last = np.ones(len(order), dtype=bool)
    same_as_next = np.all([c[1:] == c[:-1] for c in codes], axis=0)
    last[:-1] = ~same_as_next
    return table.select(order[last])


@dataclass
class RunLog:
    run_dir: Path
    config: TrainConfig
    dynamics: Table
    channels: Table | None
    status: dict = field(default_factory=dict)
    gradcorr: Table | None = None  # dynamics_gradcorr.csv, where the run logged it (--log-grad-lags)

    @property
    def live(self) -> bool:
        return self.status.get("status") == "running"


def read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise BnlabError(f"{run_dir} has no config.json; is it a bnlab run directory?")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise BnlabError(f"{path} is not valid JSON ({e.msg})") from None


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # absent or being rewritten: the run's state is unknown, the log still counts


def read_run(run_dir: str | Path, channels: bool = False) -> RunLog:
    """Config, dynamics log and (if asked for and present) the per-channel log of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BnlabError(f"run directory {run_dir} does not exist")
    config = read_config(run_dir)
    path = run_dir / "dynamics.csv"
    if not path.is_file():
        raise BnlabError(f"{run_dir} has no dynamics.csv (was the run trained with --log-every 0?)")
    table = read_table(path, REQUIRED)
    chan = None
    if channels:
        cpath = run_dir / "dynamics_channels.csv"
        if not cpath.is_file():
            raise BnlabError(f"{run_dir} has no dynamics_channels.csv; train with --log-channels for per-channel "
                             "analysis")
        chan = read_table(cpath, REQUIRED_CHANNELS)
    gpath = run_dir / GRADCORR_FILE
    gradcorr = read_table(gpath, ("step", "param", "gcos_1")) if gpath.is_file() else None
    return RunLog(run_dir=run_dir, config=config, dynamics=table, channels=chan, status=read_status(run_dir),
                  gradcorr=gradcorr)


class append_rows:
    """Context manager: a csv writer appending to a log file, writing the header if the file is new."""

    def __init__(self, path: Path, header: tuple[str, ...]) -> None:
        self.path, self.header = path, header

    def __enter__(self) -> csv._writer:  # type: ignore[name-defined]
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "a", newline="")
        w = csv.writer(self.f)
        if new:
            w.writerow(self.header)
        return w

    def __exit__(self, *exc: object) -> None:
        self.f.flush()
        self.f.close()


def truncate_csv(path: Path, max_step: int) -> None:
    """Drop rows with step > max_step (and any partial last line): used when resuming a run."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]]
    for line in lines[1:]:
        if not line.endswith("\n"):
            break
        step = line.split(",", 1)[0]
        if step.isdigit() and int(step) <= max_step:
            keep.append(line)
    write_text(path, "".join(keep))
