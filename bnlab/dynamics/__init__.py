"""Spherical dynamics of scale-invariant weights: read a run's dynamics log, detect which tensors are
scale-invariant, and compare their measured angular updates and norms with `bnlab.theory`."""
from .analysis import LayerResult, Report, analyse_log, analyse_run, match_layers
from .invariance import cos_stats, euler_cos
from .log import RunLog, read_run, read_table
from .report import format_table, write_report
from .simulate import simulate_sphere, stable_angle

__all__ = ["LayerResult", "Report", "RunLog", "analyse_log", "analyse_run", "cos_stats", "format_table",
           "match_layers", "read_run", "read_table", "euler_cos", "simulate_sphere", "stable_angle",
           "write_report"]
