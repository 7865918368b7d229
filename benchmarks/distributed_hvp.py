"""Sharded Hessian-vector products: time and bytes communicated per HVP with 1 and 2 processes, and the
expected time of a full-width, full-dataset top-20 on 8 GPUs from a measured single-process HVP cost.

Measure (CPU, gloo; each configuration in fresh processes started the way torchrun starts them):

    python benchmarks/distributed_hvp.py --width 16 --num-samples 1024 --batch-size 256 --out bench.json

The model is a DavidNet of --width (BN, batch mode, float32, initialised from seed 0) on synthetic
32x32 images in fixed batches, as `bnlab hessian` evaluates it. Configurations: 1 process x 1 thread,
1 process x 2 threads (what one process does with the machine's cores), 2 processes x 1 thread
(HessianOperator sharded by whole batches, one all_reduce per product), each with the gradient graphs
cached (the default when they fit) and streamed (--cache-graphs off). The 2-process products are checked
against the 1-process ones.

Single-process HVP cost on one device (e.g. one GPU: the input of the estimate), on 6,250 images
(50,000 / 8, one GPU's share) of the width-64 DavidNet, streamed and cached:

    python benchmarks/distributed_hvp.py --cost --device cuda --width 64 --num-samples 6250 --out cost.json

Estimate (arithmetic only; the measured cost is passed in):

    python benchmarks/distributed_hvp.py --estimate --cost-json cost.json     # or --sec-per-image S

prints the expected wall time of `torchrun --nproc-per-node 8 -m bnlab hessian --top-k 20` over all
50,000 training images of the width-64 DavidNet, with the assumptions printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- one rank's measurement
def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from bnlab import distributed
    from bnlab.config import DataSpec
    from bnlab.curvature import HessianOperator
    from bnlab.data import eval_batches, load_data
    from bnlab.models import ModelSpec, build_model

    torch.set_num_threads(args.threads)
    with distributed.launch("cpu"):
        data = load_data(DataSpec(dataset="synthetic", synthetic_train=args.num_samples, synthetic_test=10), "cpu")
        batches = list(eval_batches(data.train_x, data.train_y, args.batch_size, data))
        torch.manual_seed(0)
        model = build_model(ModelSpec(width=args.width, norm="bn")).eval()
        v = torch.randn(args.reps + 1, sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
        out: dict[str, Any] = {"world_size": distributed.world_size(), "threads": args.threads}
        for cache in (True, False):
            op = HessianOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_graphs=cache)
            distributed.barrier()
            t0 = time.perf_counter()
            first = op.matvec(v[0])  # builds the graphs when cached
            t_first = time.perf_counter() - t0
            distributed.COMM.reset()
            times, cpu, products = [], [], [first]
            for i in range(1, args.reps + 1):
                distributed.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                products.append(op.matvec(v[i]))
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            # CPU seconds of the busiest rank: what the wall time is on an otherwise idle machine
            # (1 thread per process), whatever else shares the cores while this runs.
            busiest = torch.tensor([statistics.median(cpu)], dtype=torch.float64)
            if distributed.active():
                torch.distributed.all_reduce(busiest, op=torch.distributed.ReduceOp.MAX)
            key = "cached" if cache else "streamed"
            out[key] = {"first_hvp_s": t_first, "hvp_s_median": statistics.median(times), "hvp_s_all": times,
                        "cpu_s_busiest_rank": float(busiest),
                        "allreduce_calls_per_hvp": distributed.COMM.calls / args.reps,
                        "allreduce_payload_bytes_per_hvp": distributed.COMM.bytes / args.reps,
                        "batches_here": len(op._shard), "dim": op.dim}
            out[f"{key}_products"] = torch.stack(products)
            del op
        return out


def _rank_main(args: argparse.Namespace) -> None:
    import torch

    res = measure(args)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(res, args.rank_out)


def single_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per HVP (and per image) of one process on `--device`, streamed and cached, batches 256."""
    import torch
    import torch.nn.functional as F

    from bnlab.curvature import HessianOperator
    from bnlab.device import resolve_device
    from bnlab.models import ModelSpec, build_model

    dev = resolve_device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = build_model(ModelSpec(width=args.width)).to(dev).eval()
    g = torch.Generator(device=dev).manual_seed(0)
    n = args.num_samples
    x = torch.randn(n, 3, 32, 32, device=dev, generator=g)
    y = torch.randint(0, 10, (n,), device=dev, generator=g)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                           "torch": torch.__version__, "width": args.width, "num_samples": n,
                           "batch_size": args.batch_size, "tf32_convs": torch.backends.cudnn.allow_tf32}
    for cache in (False, True):
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        op = HessianOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch",
                             cache_graphs="auto" if cache else False, cache_budget=1e13 if cache else None)
        v = torch.randn(op.dim, dtype=torch.float64, device=dev)
        sync()
        t0 = time.perf_counter()
        op.matvec(v)
        sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            op.matvec(v)
            sync()
            times.append(time.perf_counter() - t0)
        hvp = statistics.median(times)
        key = "cached" if cache else "streamed"
        res[key] = {"first_hvp_s": first, "hvp_s": hvp, "sec_per_image": hvp / n, "graph_cache": op.cache_info,
                    "peak_GB": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None}
        del op
    return res


# ----------------------------------------------------------------------------- launching the configurations
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_config(args: argparse.Namespace, procs: int, threads: int, out: Path) -> dict[str, Any]:
    from bnlab.io.torchfile import load_torch_file

    port = _free_port()
    cmd = [sys.executable, __file__, "--rank", "--width", str(args.width), "--num-samples", str(args.num_samples),
           "--batch-size", str(args.batch_size), "--reps", str(args.reps), "--threads", str(threads),
           "--rank-out", str(out)]
    env_base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(procs),
                "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join([str(REPO),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    ps = [subprocess.Popen(cmd, env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(procs)]
    codes = [p.wait() for p in ps]
    if any(codes):
        raise SystemExit(f"a rank failed ({codes})")
    return load_torch_file(out)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    if (1, 1) not in configs:
        configs.insert(0, (1, 1))
    results: dict[str, Any] = {"width": args.width, "num_samples": args.num_samples, "batch_size": args.batch_size,
                               "reps": args.reps, "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(),
                               "torch": torch.__version__, "rows": []}
    raw = {}
    with tempfile.TemporaryDirectory() as tmp:
        for procs, threads in configs:
            raw[(procs, threads)] = _run_config(args, procs, threads, Path(tmp) / f"{procs}x{threads}.pt")
    base = raw[(1, 1)]
    for (procs, threads), r in raw.items():
        for mode in ("cached", "streamed"):
            m = r[mode]
            payload = m["allreduce_payload_bytes_per_hvp"]
            rel = float(((r[f"{mode}_products"] - base[f"{mode}_products"]).norm(dim=1)
                         / base[f"{mode}_products"].norm(dim=1)).max())
            results["rows"].append({
                "processes": procs, "threads_per_process": threads, "graphs": mode,
                "hvp_s": m["hvp_s_median"], "speedup_vs_1x1": base[mode]["hvp_s_median"] / m["hvp_s_median"],
                "cpu_s_busiest_rank": m["cpu_s_busiest_rank"],
                "cpu_speedup_vs_1x1": base[mode]["cpu_s_busiest_rank"] / m["cpu_s_busiest_rank"],
                "first_hvp_s": m["first_hvp_s"], "allreduce_payload_bytes_per_hvp": payload,
                # ring all_reduce: each rank sends (and receives) 2 (W-1)/W of the payload
                "wire_bytes_sent_per_rank_per_hvp": payload * 2 * (procs - 1) / procs,
                "max_rel_diff_vs_1x1": rel, "dim": m["dim"]})
    results["load_avg_after"] = os.getloadavg()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"DavidNet width {results['width']} (dim {results['rows'][0]['dim']:,}), {results['num_samples']} "
             f"images in batches of {results['batch_size']}, BN batch mode, float32, CPU "
             f"({results['cpu_count']} cores, load average {results['load_avg_before'][0]:.1f} before)", "",
             "| processes x threads | graphs | wall s / HVP | speed-up | CPU s / HVP, busiest rank | speed-up "
             "| all_reduce payload / HVP | sent per rank / HVP | max rel. diff vs 1x1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['processes']} x {r['threads_per_process']} | {r['graphs']} | {r['hvp_s']:.3f} | "
                     f"{r['speedup_vs_1x1']:.2f}x | {r['cpu_s_busiest_rank']:.3f} | {r['cpu_speedup_vs_1x1']:.2f}x | "
                     f"{r['allreduce_payload_bytes_per_hvp'] / 1e6:.2f} MB | "
                     f"{r['wire_bytes_sent_per_rank_per_hvp'] / 1e6:.2f} MB | {r['max_rel_diff_vs_1x1']:.1e} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the 8-GPU estimate
DAVIDNET_64_PARAMS = 6_573_120
CIFAR_TRAIN = 50_000


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """Expected wall time of a top-k Hessian over the full training set on G GPUs (see --help)."""
    g, n = args.gpus, CIFAR_TRAIN
    per_gpu = n / g
    if args.cost_json is not None:  # a --cost measurement: its streamed cost, its cached graphs' size
        cost = json.loads(args.cost_json.read_text())
        args.sec_per_image = args.sec_per_image or cost["streamed"]["sec_per_image"]
        info = cost["cached"]["graph_cache"]
        args.graph_bytes_per_image = args.graph_bytes_per_image or info["estimated_bytes"] / cost["num_samples"]
    from bnlab.curvature.hessian import estimated_hvps

    hvps = estimated_hvps(args.top_k, None) + args.top_k  # solver + the verification products
    payload = DAVIDNET_64_PARAMS * 4  # float32 partial products, one all_reduce per HVP
    t_allreduce = 2 * (g - 1) / g * payload / (args.bus_gb_s * 1e9) + args.latency_s
    t_hvp = args.sec_per_image * per_gpu + t_allreduce
    graph_gb = args.graph_bytes_per_image * per_gpu / 1e9 if args.graph_bytes_per_image else None
    build = args.build_sec_per_image * per_gpu if args.build_sec_per_image else 0.0
    total = hvps * t_hvp + build
    return {"gpus": g, "images": n, "images_per_gpu": per_gpu, "top_k": args.top_k, "hvps": hvps,
            "sec_per_image_per_hvp": args.sec_per_image, "allreduce_payload_MB": payload / 1e6,
            "allreduce_s": t_allreduce, "hvp_s": t_hvp, "graph_build_s": build,
            "cached_graphs_GB_per_gpu": graph_gb, "total_s": total, "total_min": total / 60,
            "one_gpu_total_min": (hvps * args.sec_per_image * n + build * g) / 60,
            "assumptions": [
                f"{hvps} HVPs: bnlab's thick-restart Lanczos estimate for k={args.top_k} (6k+30) plus k verification "
                "products (measured on small nets: k=20 took 137 + 20)",
                "HVP cost linear in images and equal on every GPU (batches of 256 split evenly, 6250 images each)",
                f"one all_reduce of {payload / 1e6:.1f} MB (float32) per HVP at {args.bus_gb_s:g} GB/s bus bandwidth "
                f"(NCCL ring over NVLink) + {args.latency_s * 1e3:g} ms latency",
                "Lanczos' own vector work (ncv x dim float64 on each GPU) and start-up (data, graphs) not counted "
                "unless --build-sec-per-image is given",
            ]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--configs", default="1x1,2x1,1x2", help="PROCESSESxTHREADS, comma-separated (1x1 always runs).")
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    ap.add_argument("--estimate", action="store_true", help="Print the 8-GPU estimate instead of measuring.")
    ap.add_argument("--cost", action="store_true", help="Measure one process's HVP cost on --device.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cost-json", type=Path, default=None, help="A --cost result to estimate from.")
    ap.add_argument("--sec-per-image", type=float, default=None, help="Measured single-GPU seconds per image per HVP.")
    ap.add_argument("--graph-bytes-per-image", type=float, default=None)
    ap.add_argument("--build-sec-per-image", type=float, default=None)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--bus-gb-s", type=float, default=300.0)
    ap.add_argument("--latency-s", type=float, default=1e-4)
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rank-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank:
        _rank_main(args)
        return
    if args.cost:
        res = single_cost(args)
        print(json.dumps(res, indent=1))
    elif args.estimate:
        if args.sec_per_image is None and args.cost_json is None:
            ap.error("--estimate needs --cost-json or --sec-per-image (a measured single-GPU HVP cost)")
        res = estimate(args)
        print(json.dumps(res, indent=1))
    else:
        res = run_benchmark(args)
        print(table(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
