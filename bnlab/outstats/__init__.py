"""Output statistics of a network and their gradients: why BN tames the Hessian's outliers.

See docs/background.md ("The batch-norm post") for the definitions and the post's numbers.

Public API:

- ``stat_gradients(model, batches, stats=("mean",), target=Target("logits"), moments="per-batch",
  mode="none") -> StatGradients``: per-channel mean / variance / third central moment of a module's
  output over fixed batches and their exact gradients w.r.t. all parameters.
- ``per_layer_sq_norms(vectors, param_names, param_shapes)``: the post's per-layer table.
- ``perturbation_table(model, batches, mean_grads, mode=..., delta=0.01)``: δ-step along a mean
  gradient vs a random step of the same norm.
- ``orthonormal_basis``, ``overlaps``, ``random_overlaps`` (the Hessian with a span projected out is
  ``bnlab.curvature.ProjectedOperator``).
- ``activation_stats(model, batches, layers, mode=...)``: channel-mean shares, histograms, samples.
- ``fc_collapse(depth, width, ...)``, ``arccos_recursion(depth)``: deep ReLU nets at init.
- ``run_outstats(context, OutstatsOptions(...)) -> OutstatsResult`` (``.write(out)``): everything
  `bnlab outstats` writes (see also ``bnlab.outstats_of``).
"""
from .activations import activation_stats, default_layers
from .fcnet import arccos_recursion, fc_collapse
from .gradients import StatGradients, stat_gradients, trainable_parameters
from .layers import layer_of, per_layer_sq_norms
from .moments import MOMENTS, STATS
from .perturb import evaluate_shifted, perturbation_table
from .run import OutstatsOptions, OutstatsResult, run_outstats
from .subspace import orthonormal_basis, overlaps, random_overlaps
from .target import Target

__all__ = [
    "MOMENTS", "STATS", "OutstatsOptions", "OutstatsResult", "StatGradients", "Target",
    "activation_stats", "arccos_recursion", "default_layers", "evaluate_shifted",
    "fc_collapse", "layer_of", "orthonormal_basis", "overlaps", "per_layer_sq_norms", "perturbation_table",
    "random_overlaps", "run_outstats", "stat_gradients", "trainable_parameters",
]
