"""How fast a Hessian-vector product is, and what makes it faster: paired in one process, interleaved repeats.

For each model (DavidNet, the batch-norm post's simple net), width and BN mode (batch, running), on
random images (the cost does not depend on the pixels): the median wall time of one gradient and, per
product variant and block size m (vectors per pass), the time per vector, as img/s per HVP and as a
multiple of the gradient. Variants:

- ``cached``: double backward through every batch's gradient graph, kept between products (the default
  when the graphs fit); ``stream``: the graphs rebuilt every pass (shared by the m vectors of a block);
- ``func``: torch.func forward-over-reverse, vmapped over the block; ``func_compiled``: the same through
  torch.compile (its compile time is recorded apart, ``--compile``).

Every repeat runs every (variant, m) once, in one order, so load on the machine hits all rows alike.

    python benchmarks/hvp_speed.py --out hvp_speed.json                      # CPU, the full grid
    python benchmarks/hvp_speed.py --device cuda --compile --tf32 --out gpu.json
    python benchmarks/hvp_speed.py --models davidnet --widths 8 --modes batch --blocks 1,8 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bnlab.curvature import HessianOperator
from bnlab.models import ModelSpec, build_model
from bnlab.reproduce.run import _cpu_name  # the CPU's model name, as the reproduce report records it

VARIANTS = {"cached": dict(method="double_backward", cache_graphs=True),
            "stream": dict(method="double_backward", cache_graphs=False),
            "func": dict(method="func"), "func_compiled": dict(method="func_compiled")}


def make_operators(model_name: str, width: int, mode: str, args: argparse.Namespace,
                   variants: list[str]) -> dict[str, HessianOperator]:
    """The same random-init network (softplus, so second derivatives exist) and batches under every variant."""
    torch.manual_seed(0)
    norm = "bn" if model_name == "davidnet" else "bn_fixed_affine"
    model = build_model(ModelSpec(model=model_name, width=width, norm=norm, act="softplus")).to(args.device)
    if mode == "running":  # non-trivial running statistics (a fresh BN has mean 0, var 1)
        with torch.no_grad():
            model.train()
            model(torch.randn(args.batch_size, 3, 32, 32, device=args.device))
    model.eval()
    g = torch.Generator().manual_seed(1)
    sizes = [args.batch_size] * (args.num_samples // args.batch_size)
    batches = [(torch.randn(n, 3, 32, 32, generator=g).to(args.device),
                torch.randint(0, 10, (n,), generator=g).to(args.device)) for n in sizes]
    return {v: HessianOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode,
                               block_size=max(args.blocks), **VARIANTS[v]) for v in variants}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def measure(ops: dict[str, HessianOperator], args: argparse.Namespace) -> tuple[dict[str, Any], list[dict]]:
    """Warm-up (graph cache filled, compile timed), then `repeats` interleaved rounds; medians."""
    any_op = next(iter(ops.values()))
    dim, n = any_op.dim, any_op.num_samples
    gen = torch.Generator().manual_seed(2)
    V = torch.randn(max(args.blocks), dim, generator=gen, dtype=torch.float64)
    warm: dict[str, float] = {}
    with precision(args):
        for name, op in ops.items():  # first products: graphs built, compiled per block size
            warm[name] = sum(timed(lambda op=op, m=m: op.matmat(V[:m]), args.device) for m in args.blocks)
        grad_t, per = [], {(v, m): [] for v in ops for m in args.blocks}
        for _ in range(args.repeats):
            grad_t.append(timed(any_op.gradient, args.device))
            for (v, m), ts in per.items():
                ts.append(timed(lambda op=ops[v], m=m: op.matmat(V[:m]), args.device) / m)
    g = statistics.median(grad_t)
    rows = [{"variant": v, "m": m, "seconds_per_vector": statistics.median(ts), "img_per_s": n / statistics.median(ts),
             "hvp_over_gradient": statistics.median(ts) / g, "all_seconds_per_vector": ts}
            for (v, m), ts in per.items()]
    return {"dim": dim, "num_samples": n, "gradient_seconds": g, "gradient_img_per_s": n / g,
            "warmup_seconds": warm, "graph_cache": {v: dict(op.cache_info) for v, op in ops.items()}}, rows


def precision(args: argparse.Namespace):  # noqa: ANN201
    """bf16 autocast around the products if asked (TF32 is a global switch, set in main)."""
    if not args.bf16:
        return nullcontext()
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)


def table(results: list[dict]) -> str:
    lines = [f"{'model':9s} {'w':>3s} {'mode':7s} {'variant':14s} {'m':>3s} {'s/vector':>9s} {'img/s':>8s} "
             f"{'x grad':>7s}"]
    for r in results:
        head = f"{r['model']:9s} {r['width']:3d} {r['bn_mode']:7s}"
        lines.append(f"{head} {'gradient':14s} {'':3s} {r['gradient_seconds']:9.3f} {r['gradient_img_per_s']:8.0f}")
        for row in r["rows"]:
            lines.append(f"{head} {row['variant']:14s} {row['m']:3d} {row['seconds_per_vector']:9.3f} "
                         f"{row['img_per_s']:8.0f} {row['hvp_over_gradient']:7.2f}")
        lines.append(f"{head} compile/warm-up s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["warmup_seconds"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="davidnet,simple")
    ap.add_argument("--widths", default="8,16")
    ap.add_argument("--modes", default="batch,running")
    ap.add_argument("--blocks", default="1,2,4,8,16", help="vectors per pass (m)")
    ap.add_argument("--variants", default="cached,stream,func", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--compile", action="store_true", help="also func_compiled (compile time recorded apart)")
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls and convolutions")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast around the products")
    ap.add_argument("--out", default="hvp_speed.json")
    args = ap.parse_args(argv)
    args.blocks = [int(s) for s in args.blocks.split(",") if s]
    args.variants = [s for s in args.variants.split(",") if s] + (["func_compiled"] if args.compile else [])
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not args.blocks or min(args.blocks) < 1 or args.num_samples < args.batch_size:
        ap.error(f"bad arguments: unknown variants {sorted(unknown)}, blocks {args.blocks}, "
                 f"--num-samples must be >= --batch-size")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else _cpu_name(),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__, "tf32": args.tf32, "bf16": args.bf16,
        "num_samples": args.num_samples, "batch_size": args.batch_size, "repeats": args.repeats,
        "blocks": args.blocks, "variants": args.variants, "results": []}
    for model_name in args.models.split(","):
        for width in [int(w) for w in args.widths.split(",")]:
            for mode in args.modes.split(","):
                ops = make_operators(model_name, width, mode, args, args.variants)
                summary, rows = measure(ops, args)
                out["results"].append({"model": model_name, "width": width, "bn_mode": mode, **summary, "rows": rows})
                print(table(out["results"][-1:]), flush=True)
                Path(args.out).write_text(json.dumps(out, indent=1))  # after every model: a partial run keeps rows
    return out


if __name__ == "__main__":
    main()
