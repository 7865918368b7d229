"""bnlab's top-k Hessian eigenpairs vs PyHessian and hessian-eigenthings, on CPU.

Same checkpoint (a DavidNet of width --width, saved as a bnlab checkpoint), same fixed evaluation
set (class-balanced, unaugmented, fixed batches), BN in running mode (the only mode PyHessian
supports: it forces model.eval()). For k in --ks, each tool's HVP count and wall time to reach a
max relative eigenvalue error <= --target against a tight reference (bnlab Lanczos, tol 1e-7,
float32 HVPs), sweeping each peer's accuracy knob until it gets there (or its largest setting).
Also the cost of one HVP relative to one gradient, per HVP method. bnlab runs with its defaults
(double backward; gradient graphs cached when they fit, as here); PyHessian rebuilds the graph
for every HVP; hessian-eigenthings is given bnlab's operator (so it counts solver steps only).

Peers are NOT bnlab dependencies: pip install pyhessian hessian-eigenthings.

    python benchmarks/hessian_vs_peers.py --width 8 --num-samples 320 --batch-size 160 --out bench.json
    python benchmarks/hessian_vs_peers.py --width 16 --num-samples 1280 --batch-size 256 --cost-only
    # BN batch mode, bnlab.bnfunc's double backward against PyTorch's generic one, interleaved:
    python benchmarks/hessian_vs_peers.py --width 16 --num-samples 640 --batch-size 256 --cost-only \
        --bn-mode batch --compare-generic-bn --cost-variants double_backward+cached_graph --no-matmat
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bnlab.checkpoint import load_checkpoint, save_checkpoint
from bnlab.config import make_config
from bnlab.curvature import hessian_operator_from_checkpoint, top_eigenpairs
from bnlab.models import build_model


def rel_err(found: np.ndarray, ref: np.ndarray) -> float:
    k = len(ref)
    if len(found) < k:
        return float("inf")
    return float(np.max(np.abs(np.sort(found)[::-1][:k] - ref) / np.abs(ref)))


def rel_err_lm(found: np.ndarray, ref_lm: np.ndarray) -> float:
    """As rel_err, against the largest-magnitude reference (what power iteration converges to)."""
    k = len(ref_lm)
    if len(found) < k:
        return float("inf")
    f = np.asarray(found)[np.argsort(-np.abs(found), kind="stable")][:k]
    return float(np.max(np.abs(f - ref_lm) / np.abs(ref_lm)))


def make_checkpoint(width: int, data_dir: str | None, tmp: Path, synthetic_images: int = 5000) -> Path:
    dataset = "cifar10" if data_dir else "synthetic"
    cfg = make_config("bn", width=width, dataset=dataset, data_dir=data_dir, act="softplus",
                      synthetic_train=None if data_dir else synthetic_images)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    # A few steps of plain SGD so the weights are not at initialisation (cheap, deterministic).
    from bnlab.data import load_data, train_batches
    data = load_data(cfg.data, "cpu", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i, (x, y) in enumerate(train_batches(data, cfg.data, 128, seed=0, epoch=0)):
        if i == 8:
            break
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp / "bench.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict()})
    return path


COST_VARIANTS = {"double_backward": dict(method="double_backward", cache_graphs=False), "func": dict(method="func"),
                 "double_backward+cached_graph": dict(method="double_backward", cache_graphs=True)}


def cost_ratios(op, repeats: int, variants: list[str] | None = None, matmat: bool = True,
                generic_bn: bool = False) -> dict[str, object]:
    """Median wall time of one HVP per method divided by that of one gradient (interleaved runs).

    generic_bn (BN batch mode): also time the double-backward rows and the gradient with PyTorch's
    generic batch-norm double backward (`bnlab.bnfunc.generic_batch_norm`, the path before
    bnlab.bnfunc), interleaved with the default rows; "generic BN: ..." rows are ratios to that
    path's own gradient, and the "seconds" entry has every median.
    """
    from bnlab.bnfunc import generic_batch_norm
    from bnlab.curvature import HessianOperator
    variants = list(COST_VARIANTS) if variants is None else variants
    paths = {"": False, "generic BN: ": True} if generic_bn else {"": False}
    # No generic twin for func: it runs under torch.func, where BN is F.batch_norm on both paths.
    ops = {(p, k): HessianOperator(op.model, op._batches, loss_fn=op.loss_fn, bn_mode=op.bn_mode, **COST_VARIANTS[k])
           for p in paths for k in variants if not (paths[p] and k == "func")}
    v = torch.randn(op.dim, dtype=torch.float64)
    times: dict[str, list[float]] = {}

    def timed(name: str, generic: bool, fn, per: int = 1) -> None:  # noqa: ANN001
        with generic_batch_norm(generic):
            t = time.perf_counter()
            fn()
            times.setdefault(name, []).append((time.perf_counter() - t) / per)

    for (p, _), o in ops.items():
        with generic_batch_norm(paths[p]):
            o.matvec(v)  # warm-up (and fills the graph cache, built by this path's BN)
    for _ in range(repeats):
        V = torch.randn(8, op.dim, dtype=torch.float64)
        for p, generic in paths.items():
            timed(f"{p}gradient", generic, op.gradient)
        for (p, k), o in ops.items():
            timed(f"{p}{k}", paths[p], lambda o=o: o.matvec(v))
        for (p, k), o in ops.items():
            if matmat and k in ("double_backward", "func"):
                timed(f"{p}{k} matmat(8), per vector", paths[p], lambda o=o, V=V: o.matmat(V), per=8)
    med = {k: statistics.median(t) for k, t in times.items()}
    out: dict[str, object] = {"gradient_seconds": med["gradient"]}
    for name, t in med.items():
        p = "generic BN: " if name.startswith("generic BN: ") else ""
        if name != f"{p}gradient":
            out[f"{name} / gradient"] = t / med[f"{p}gradient"]
    out["seconds"] = med
    out["repeats"] = repeats
    return out


def run_bnlab(op, k: int, ref: np.ndarray, target: float) -> dict:
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        r = top_eigenpairs(op, k, which="LA", tol=tol)
        err = rel_err(r.eigenvalues.numpy(), ref)
        if err <= target:
            break
    return {"tool": "bnlab (thick-restart Lanczos)", "setting": f"tol={tol:g}", "hvps": r.hvp_count,
            "seconds": r.wall_time, "max_rel_err": err}


def run_arpack(op, k: int, ref: np.ndarray, target: float) -> dict:
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        r = top_eigenpairs(op, k, which="LA", tol=tol, method="arpack")
        err = rel_err(r.eigenvalues.numpy(), ref)
        if err <= target:
            break
    return {"tool": "bnlab (ARPACK eigsh)", "setting": f"tol={tol:g}", "hvps": r.hvp_count,
            "seconds": r.wall_time, "max_rel_err": err}


def run_pyhessian(model, batches, k: int, ref: np.ndarray, target: float, max_hvps: int,
                  ref_lm: np.ndarray | None = None) -> dict:
    """PyHessian's top-k (power iteration, largest magnitude). Scored against the LA reference like
    everyone, and also against the LM reference, so a run that finds a large negative eigenvalue
    correctly is not counted as wrong; the better of the two is the row's error."""
    from pyhessian import hessian as pyh

    best = None
    for tol in (1e-3, 1e-4, 1e-5):
        h = pyh(model, F.cross_entropy, dataloader=batches, cuda=False)
        count = [0]
        inner = h.dataloader_hv_product

        def counted(v, inner=inner, count=count):
            count[0] += 1
            if count[0] > max_hvps:
                raise RuntimeError("HVP budget exhausted")
            return inner(v)

        h.dataloader_hv_product = counted
        t = time.perf_counter()
        try:
            vals, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=k)
            err = rel_err(np.array(vals), ref)
            err_lm = rel_err_lm(np.array(vals), ref_lm[:k]) if ref_lm is not None else float("inf")
        except RuntimeError:
            err = err_lm = float("inf")
        best = {"tool": "PyHessian 0.1 (power iteration + deflation)", "setting": f"tol={tol:g}, maxIter=100",
                "hvps": count[0], "seconds": time.perf_counter() - t, "max_rel_err": min(err, err_lm),
                "max_rel_err_vs_LA": err, "max_rel_err_vs_LM": err_lm}
        err = min(err, err_lm)
        if err <= target or err == float("inf"):
            break
    return best


def run_eigenthings(op, k: int, ref: np.ndarray, target: float, max_steps: int) -> dict:
    import hessian_eigenthings as he

    lop = he.LambdaOperator(lambda v: op.matvec(v.to(torch.float64)).to(torch.float32), op.dim,
                            dtype=torch.float32)
    steps = 2 * k
    while True:
        t = time.perf_counter()
        r = he.lanczos(lop, k=k, max_iter=steps, tol=1e-4, which="LA", seed=0, reorthogonalize=True)
        err = rel_err(r.eigenvalues.double().numpy(), ref)
        res = {"tool": "hessian-eigenthings 1.0.0a5 (Lanczos, no restart, full reorth)",
               "setting": f"max_iter={steps}", "hvps": steps, "seconds": time.perf_counter() - t, "max_rel_err": err}
        if err <= target or steps >= max_steps:
            return res
        steps = min(max_steps, int(steps * 1.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--num-samples", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=160)
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--target", type=float, default=1e-4)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: synthetic images)")
    ap.add_argument("--synthetic-images", type=int, default=5000, help="size of the synthetic training set "
                    "(without --data-dir; at least 1024 for the 8 warm-up steps of 128)")
    ap.add_argument("--pyhessian-max-hvps", type=int, default=1500)
    ap.add_argument("--cost-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cost-only", action="store_true", help="only the HVP / gradient cost table")
    ap.add_argument("--cost-variants", default=",".join(COST_VARIANTS),
                    help=f"HVP rows of the cost table (comma list of {', '.join(COST_VARIANTS)})")
    ap.add_argument("--no-matmat", action="store_true", help="leave the matmat(8) rows out of the cost table")
    ap.add_argument("--compare-generic-bn", action="store_true",
                    help="BN batch mode: also time PyTorch's generic BN double backward, interleaved")
    ap.add_argument("--bn-mode", choices=["running", "batch"], default="running",
                    help="batch only with --cost-only (the peers support running mode only)")
    ap.add_argument("--out", default="hessian_vs_peers.json")
    args = ap.parse_args()
    if args.bn_mode == "batch" and not args.cost_only:
        ap.error("--bn-mode batch needs --cost-only: PyHessian and hessian-eigenthings only run in eval mode")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ck = make_checkpoint(args.width, args.data_dir, Path(tmp), args.synthetic_images)
        ckpt = load_checkpoint(ck)
        op = hessian_operator_from_checkpoint(ckpt, num_samples=args.num_samples, batch_size=args.batch_size,
                                              bn_mode=args.bn_mode, device="cpu")  # graphs cached if they fit
    batches = list(op.batches())
    out = {"settings": op.settings, "target_rel_err": args.target, "threads": args.threads, "rows": []}
    variants = [k for k in args.cost_variants.split(",") if k]
    unknown = set(variants) - set(COST_VARIANTS)
    if unknown:
        ap.error(f"unknown --cost-variants {', '.join(sorted(unknown))}")
    out["cost"] = cost_ratios(op, args.cost_repeats, variants, matmat=not args.no_matmat,
                              generic_bn=args.compare_generic_bn and args.bn_mode == "batch")
    print(json.dumps(out["cost"], indent=1), flush=True)
    out["graph_cache"] = dict(op.cache_info)  # still undecided here; rewritten after bnlab's runs below
    if args.cost_only:
        Path(args.out).write_text(json.dumps(out, indent=1))
        return
    ks = [int(s) for s in args.ks.split(",")]
    ref_r = top_eigenpairs(op, max(ks), which="LA", tol=1e-7, ncv=max(ks) * 3)
    ref_all = ref_r.eigenvalues.numpy()
    ref_lm_r = top_eigenpairs(op, max(ks), which="LM", tol=1e-7, ncv=max(ks) * 3)
    ref_lm = ref_lm_r.eigenvalues.numpy()
    out["reference"] = {"eigenvalues": ref_all.tolist(), "hvps": ref_r.hvp_count,
                        "converged": ref_r.converged.tolist(), "eigenvalues_LM": ref_lm.tolist()}
    print(f"reference LA: {np.array2string(ref_all[:6], precision=4)} ...; LM: "
          f"{np.array2string(ref_lm[:6], precision=4)} ...", flush=True)
    for k in ks:
        ref = ref_all[:k]
        runs = [lambda k=k, ref=ref: run_bnlab(op, k, ref, args.target),
                lambda k=k, ref=ref: run_arpack(op, k, ref, args.target),
                lambda k=k, ref=ref: run_eigenthings(op, k, ref, args.target, max_steps=min(op.dim - 1, 40 * k)),
                lambda k=k, ref=ref: run_pyhessian(ckpt.model, batches, k, ref, args.target, args.pyhessian_max_hvps,
                                                           ref_lm)]
        rows = []
        for run in runs:  # each row printed as soon as it is measured
            r = run()
            r["k"] = k
            rows.append(r)
            print(f"k={k:2d} {r['tool']:60s} {r['setting']:22s} HVPs {r['hvps']:5d}  {r['seconds']:8.1f}s  "
                  f"max rel err {r['max_rel_err']:.1e}", flush=True)
        out["rows"] += rows
    out["graph_cache"] = dict(op.cache_info)  # decided on the first product of `op` (the reference run)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
