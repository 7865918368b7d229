"""bnlab: why batch norm and weight decay work, measured on DavidNet.

Entry points (each also a command, see `bnlab --help`):

- ``bnlab.make_config`` + ``bnlab.train.train``: training runs (``bnlab train``);
  ``bnlab.recipes.recipe_config``: the baseline and bag-of-tricks recipes (``bnlab train --recipe``);
- ``bnlab.ablate.run_ablation``: the bag-of-tricks steps one at a time, several seeds (``bnlab ablate``);
- ``bnlab.load_checkpoint``: a checkpoint's model, config and metadata;
- ``bnlab.hessian``: Hessian eigenpairs, density, trace (``bnlab hessian``);
- ``bnlab.output_stats``: output-statistic gradients and spans (``bnlab outstats``);
- ``bnlab.analyse_dynamics``: the weight-decay equilibrium of a run (``bnlab dynamics``);
- ``bnlab.sweep.run_sweep`` / ``summarise_sweep``: grids of runs (``bnlab sweep``).
"""
from .checkpoint import Checkpoint, load_checkpoint
from .config import make_config
from .version import __version__

_API = ("hessian", "output_stats", "analyse_dynamics")


def __getattr__(name: str) -> object:
    # The analysis entry points import scipy and the analysis stack: only when first used.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnlab' has no attribute {name!r}")


__all__ = ["Checkpoint", "__version__", "analyse_dynamics", "hessian", "load_checkpoint", "make_config",
           "output_stats"]
