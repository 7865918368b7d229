"""Hyper-parameter sweeps: a grid of training runs, resumable, parallel and shareable between workers,
summarised by lr·wd groups.

- `grid`: the grid spec (``"lr=0.1,0.2 wd=5e-4"``), its points and its file grid.json;
- `runner`: training the points (``run_sweep``; ``--jobs`` processes, or ``--worker`` processes
  sharing one folder);
- `summary`: each point's final metrics and equilibrium statistics, grouped by lr·wd.
"""
from .grid import ALIASES, GRID_FORMAT, Grid, Point, canonical_key, parse_grid, parse_value, read_grid_file
from .runner import DONE, SweepOutcome, point_dir, point_state, prepare_sweep_dir, run_point, run_sweep
from .summary import format_summary, group_rows, norm_exponents, summarise_point, summarise_sweep

__all__ = [
    "ALIASES", "DONE", "GRID_FORMAT", "Grid", "Point", "SweepOutcome", "canonical_key", "format_summary",
    "group_rows", "norm_exponents", "parse_grid", "parse_value", "point_dir", "point_state", "prepare_sweep_dir",
    "read_grid_file", "run_point", "run_sweep", "summarise_point", "summarise_sweep",
]
