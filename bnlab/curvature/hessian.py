"""`bnlab hessian` as a function: options → `run_hessian(context, options)` → `HessianResult.write(out)`.

The result holds the record written to ``hessian.json`` (every setting: the matrix — the Hessian,
its Gauss-Newton part or the residual, `bnlab.curvature.ggn` —, BN mode, units, evaluation set,
checkpoint hash; eigenvalues, residuals, convergence; density and trace if asked; for the
Gauss-Newton matrix also its class-means term) and the eigenpairs written to ``eigvecs.pt``
(`bnlab.io.eigvecs`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import validate as check
from ..context import AnalysisContext, EvalSpec
from ..errors import BnlabError
from ..io.eigvecs import FILENAME as EIGVECS_FILE
from ..io.eigvecs import read_eigvecs, write_eigvecs
from ..io.folder import result_folder
from ..io.jsonfile import write_json
from ..io.result import write_files
from ..options import opt
from ..progress import Progress
from ..version import __version__
from .base import LOSS_SCALES
from .density import slq_density
from .ggn import MATRICES
from .hvp import HVP_METHODS
from .lanczos import EIG_METHODS, WHICH, EigenResult, top_eigenpairs
from .params import select_parameters
from .source import curvature_operator
from .trace import hutchpp_trace

DEFAULT_TOL = 1e-4  # relative residual ‖Hv − λv‖ ≤ tol·|λ|: eigenvalues to ~tol² relative
CACHE_GRAPHS = ("auto", "on", "off")
RECORD_FILE = "hessian.json"
# No option may ask for more Hessian-vector products than this (weeks of work for the smallest net):
# a larger count is a typo, refused before any work.
MAX_HVPS = 10**7
_MAX = f"{MAX_HVPS:,}"  # as the option domains state it


def tol_opt() -> Any:
    """The convergence tolerance option (the same for every command that solves for eigenpairs)."""
    return opt(DEFAULT_TOL, help="Eigenpairs converged when ‖Hv−λv‖ ≤ tol·|λ|.", unit="relative residual",
               domain="(0, 1)")


def loss_scale_opt() -> Any:
    """The units of the curvature (the same for every command that takes Hessian products)."""
    return opt("mean", choices=LOSS_SCALES, help="Hessian units: mean loss over the set, or loss summed over a "
               "batch (batch-size x mean; the batch-norm post's units).")


@dataclass(frozen=True)
class HessianOptions:
    """What `bnlab hessian` computes (the evaluation set is `eval`)."""

    eval: EvalSpec = field(default_factory=EvalSpec)
    matrix: str = opt("hessian", choices=MATRICES, help="hessian H; ggn: the Gauss-Newton part G = J^T H_out J "
                      "(with its class-means term); residual: R = H - G.")
    top_k: int = opt(20, help="Number of eigenpairs (0: none).", domain=f"0..{_MAX}, at most the dimension")
    which: str = opt("LA", choices=WHICH, help="LA largest algebraic, SA smallest, LM largest magnitude.")
    tol: float = tol_opt()
    eigensolver: str = opt("lanczos", choices=EIG_METHODS, help="Thick-restart Lanczos (ours), ARPACK (scipy "
                           "eigsh), or block: thick-restart block Lanczos, 4 vectors per pass (fewer passes, more "
                           "products).")
    ncv: int | None = opt(None, help="Krylov subspace size.", domain="> --top-k", default_text="max(2k+10, 20)")
    max_hvps: int | None = opt(None, help="Stop after this many HVPs (unconverged pairs flagged).",
                               domain=f"1..{_MAX}", default_text="no limit")
    verify: bool = opt(True, flag="--no-verify", help="Report Lanczos residual estimates instead of measuring "
                       "them (k HVPs).")
    density: bool = opt(False, help="Also the spectral density by stochastic Lanczos quadrature.")
    density_probes: int = opt(10, help="Random probes of the density.", domain=f"1..{_MAX}")
    density_steps: int = opt(64, help="Lanczos steps per density probe.", domain=f"2..{_MAX}")
    trace: bool = opt(False, help="Also the trace by Hutch++.")
    trace_matvecs: int = opt(60, help="Hessian-vector products of the Hutch++ trace.", domain=f"3..{_MAX}")
    seed: int = opt(0, help="Start vector and probe seed.", domain="0..2^32-1")
    warm_start: str | None = opt(None, path=True, help="eigvecs.pt (or a hessian output dir) of an earlier run to "
                                 "start from.")
    params: tuple[str, ...] | None = opt(None, help="Parameter globs, comma-separated, '!' excludes (e.g. "
                                         "'layer3*').", default_text="all trainable")
    loss_scale: str = loss_scale_opt()
    weight_decay_term: bool = opt(False, help="Add the run's wd·I (all parameters are decayed).")
    hvp_method: str = opt("double_backward", choices=HVP_METHODS, help="How a Hessian-vector product is taken.")
    cache_graphs: str = opt("auto", choices=CACHE_GRAPHS, help="Keep every batch's gradient graph between HVPs "
                            "(faster, memory O(N)); auto: if it fits in half the free memory.")

    def validate(self) -> None:
        self.eval.validate()
        check.integer("--top-k", self.top_k, 0, MAX_HVPS)
        check.choice("--which", self.which, WHICH)
        check.in_range("--tol", self.tol, 0.0, 1.0, low_open=True, high_open=True)
        check.choice("--eigensolver", self.eigensolver, EIG_METHODS)
        if self.ncv is not None and check.integer("--ncv", self.ncv, 2, MAX_HVPS) <= self.top_k:
            raise BnlabError(f"--ncv must be larger than --top-k ({self.top_k}), got {self.ncv}")
        if self.max_hvps is not None:
            check.integer("--max-hvps", self.max_hvps, 1, MAX_HVPS)
        check.integer("--density-probes", self.density_probes, 1, MAX_HVPS)
        check.integer("--density-steps", self.density_steps, 2, MAX_HVPS)
        check.integer("--trace-matvecs", self.trace_matvecs, 3, MAX_HVPS)
        if self.density and self.density_probes * self.density_steps > MAX_HVPS:
            raise BnlabError(f"--density-probes {self.density_probes} x --density-steps {self.density_steps} "
                             f"HVPs exceed {MAX_HVPS}")
        check.seed("--seed", self.seed)
        check.choice("--loss-scale", self.loss_scale, LOSS_SCALES)
        check.choice("--hvp-method", self.hvp_method, HVP_METHODS)
        check.choice("--cache-graphs", self.cache_graphs, CACHE_GRAPHS)
        check.choice("--matrix", self.matrix, MATRICES)
        if self.matrix == "ggn" and (self.cache_graphs == "on" or self.hvp_method != "double_backward"):
            raise BnlabError("--hvp-method and --cache-graphs on are for Hessian products: the Gauss-Newton "
                             "matrix (--matrix ggn) has its own (jvp, output Hessian, vjp)")
        if self.cache_graphs == "on" and self.hvp_method != "double_backward":
            raise BnlabError("--cache-graphs on needs --hvp-method double_backward")
        if not (self.top_k or self.density or self.trace):
            raise BnlabError("nothing to compute: --top-k 0 without --density or --trace")
        if self.warm_start is not None and self.top_k == 0:
            raise BnlabError("--warm-start needs --top-k > 0")


@dataclass
class HessianResult:
    record: dict[str, Any]  # what hessian.json holds
    eigen: EigenResult | None
    param_names: list[str]
    shapes: list[list[int]]

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        return None if self.eigen is None else self.eigen.eigenvalues

    def write(self, out: str | Path) -> list[Path]:
        """hessian.json and (with eigenpairs) eigvecs.pt into the folder `out`."""
        out, eig = result_folder(out), self.eigen
        # The record last: a failed write (full disk) never leaves a hessian.json without its eigvecs.pt.
        writers = [] if eig is None else [lambda: write_eigvecs(out / EIGVECS_FILE, eig.eigenvalues,
                                                                 eig.eigenvectors, self.param_names, self.shapes,
                                                                 self.record["settings"])]
        return write_files([*writers, lambda: write_json(out / RECORD_FILE, self.record, indent=1)])


def make_operator(ctx: AnalysisContext, opts: HessianOptions, *, quiet: bool = True) -> Any:
    """The curvature operator (opts.matrix) these options describe, on the context's batches."""
    op = curvature_operator(ctx, opts.matrix, params=opts.params, loss_scale=opts.loss_scale,
                            weight_decay_term=opts.weight_decay_term, method=opts.hvp_method,
                            cache_graphs={"on": True, "off": False}.get(opts.cache_graphs, "auto"))
    op.quiet = quiet
    return op


def check_inputs(ctx: AnalysisContext, opts: HessianOptions) -> torch.Tensor | None:
    """Everything that can be refused before the computation; returns the warm-start block."""
    opts.validate()
    selected = select_parameters(ctx.model, list(opts.params) if opts.params else None)
    dim = sum(p.numel() for _, p in selected)
    limit = dim - 1 if opts.eigensolver == "arpack" else dim
    if opts.top_k > limit:
        raise BnlabError(f"--top-k {opts.top_k} is larger than the Hessian's dimension allows ({dim} parameters"
                         f"{'; ARPACK needs k < dim' if opts.eigensolver == 'arpack' else ''})")
    if opts.warm_start is None:
        return None
    ev = read_eigvecs(opts.warm_start)
    names = [n for n, _ in selected]
    if ev.param_names != names:
        raise BnlabError(f"{opts.warm_start} was computed over different parameters than this Hessian; "
                         "cannot warm-start")
    return ev.eigenvectors


def estimated_hvps(k: int, max_hvps: int | None) -> int:
    """A rough HVP count of thick-restart Lanczos to tol 1e-3..1e-4 (measured: k=5: 52, 10: 80, 20: 137)."""
    est = 6 * k + 30
    return min(est, max_hvps) if max_hvps else est


def run_hessian(ctx: AnalysisContext, opts: HessianOptions, *, quiet: bool = True,
                op: Any = None, v0: torch.Tensor | None = None) -> HessianResult:
    """Top-k eigenpairs (and optionally SLQ density and Hutch++ trace) of the context's Hessian.

    op: an operator already made by `make_operator` for these options. v0: start vectors (rows),
    e.g. the previous checkpoint's eigenvectors along a series (instead of opts.warm_start).
    """
    warm = check_inputs(ctx, opts)
    v0 = v0 if v0 is not None else warm
    t0 = time.perf_counter()
    op = op if op is not None else make_operator(ctx, opts, quiet=quiet)
    ckpt = ctx.checkpoint
    record: dict[str, Any] = {"bnlab_version": __version__, "torch_version": torch.__version__,
                              "settings": None,  # filled in at the end (what the first product decided)
                              "checkpoint_meta": {k: v for k, v in ckpt.meta.items()
                                                  if isinstance(v, (int, float, str, bool)) or v is None}}
    result = None
    if opts.top_k:
        result = _eigenpairs(op, opts, v0, quiet)
        lam = result.eigenvalues
        record["eigen"] = {
            "which": opts.which, "tol": opts.tol, "method": opts.eigensolver, "k": opts.top_k,
            "eigenvalues": lam.tolist(), "residuals": result.residuals.tolist(),
            "relative_residuals": (result.residuals / lam.abs().clamp_min(1e-300)).tolist(),
            "residuals_measured": result.verified, "converged": result.converged.tolist(),
            "all_converged": bool(result.converged.all()), "hvp_count": result.hvp_count,
            "verify_hvps": result.verify_hvps, "restarts": result.restarts, "wall_time": result.wall_time,
            "warm_start": (str(opts.warm_start) if opts.warm_start else
                           "given start vectors" if v0 is not None else None), "seed": opts.seed,
        }
    if opts.density:
        record["density"] = slq_density(op, num_probes=opts.density_probes, lanczos_steps=opts.density_steps,
                                        seed=opts.seed).to_dict()
    if opts.trace:
        record["trace"] = {**hutchpp_trace(op, num_matvecs=opts.trace_matvecs, seed=opts.seed).to_dict(),
                           "dim": op.dim}
    if opts.matrix == "ggn":
        record["class_means"] = class_means_record(op, result)
    # Known only after the first product: whether the gradient graphs were cached.
    record["settings"] = op.settings
    record["hvp_count_total"] = op.hvp_count
    record["wall_time_total"] = time.perf_counter() - t0
    return HessianResult(record, result, list(op.param_names), [list(s) for s in op.layout.shapes])


def class_means_record(op: Any, result: EigenResult | None) -> dict[str, Any]:
    """Papyan's class-means term G_cm of the Gauss-Newton matrix (rank <= C, exact eigenvalues), and how
    much of each computed eigenvector of G lies in its span."""
    cm = op.class_means()
    lam, vecs = cm.eigenpairs()
    rec: dict[str, Any] = {"definition": "c * sum_c (n_c/N) delta_c delta_c^T, delta_c the class-c mean of column c of "
                                         "the per-example factors J_i^T A_i (H_out,i = A_i A_i^T)",
                           "rank_bound": cm.rank_bound, "eigenvalues": lam.tolist()}
    if result is not None and result.eigenvectors.shape[0]:
        keep = vecs[lam > lam[0] * 1e-12] if len(lam) and lam[0] > 0 else vecs[:0]
        q = torch.linalg.qr(keep.T)[0] if keep.shape[0] else keep.T
        proj = result.eigenvectors.to(q) @ q
        rec["eigvec_overlap"] = (proj ** 2).sum(1).tolist()  # ‖P_cm v_j‖² for G's eigenvectors v_j
    return rec


def _eigenpairs(op: Any, opts: HessianOptions, v0: torch.Tensor | None, quiet: bool) -> EigenResult:
    return solve_with_progress(op, opts.top_k, which=opts.which, tol=opts.tol, v0=v0, method=opts.eigensolver,
                               ncv=opts.ncv, max_hvps=opts.max_hvps, seed=opts.seed, verify=opts.verify,
                               desc="hessian: HVPs", quiet=quiet)


def solve_with_progress(op: Any, k: int, *, desc: str, quiet: bool, which: str = "LA", tol: float = DEFAULT_TOL,
                        v0: torch.Tensor | None = None, method: str = "lanczos", ncv: int | None = None,
                        max_hvps: int | None = None, seed: int = 0, verify: bool = True) -> EigenResult:
    """`top_eigenpairs` with a progress bar over the products (the total is an estimate)."""
    start = op.hvp_count if hasattr(op, "hvp_count") else 0
    progress = Progress(estimated_hvps(k, max_hvps), f"{desc} (total estimated)", quiet=quiet, unit="HVP")

    def show(hvps: int, rel: Any) -> None:
        worst = max(rel) if len(rel) else 0.0
        done = int(sum(r <= tol for r in rel))
        progress.update(hvps - progress.n, postfix=f"converged {done}/{len(rel)}, max rel. residual {worst:.1e}")

    result = top_eigenpairs(op, k, which=which, tol=tol, v0=v0, method=method, ncv=ncv, max_hvps=max_hvps,
                            seed=seed, verify=verify, callback=show)
    used = (op.hvp_count - start) if hasattr(op, "hvp_count") else result.hvp_count + result.verify_hvps
    progress.update(max(0, used - progress.n))
    progress.close(postfix=f"{result.hvp_count} HVPs, {int(result.converged.sum())}/{k} converged")
    return result
