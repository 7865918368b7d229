"""Training throughput of `bnlab train` against a real limit and against the 2018 reference loop.

Three or four measurements, each in a fresh process (so that no allocator state or thread setting leaks
from one into the next), interleaved `--repeats` times:

- **bnlab**: `bnlab.train.train` exactly as users run it (defaults: dynamics log every step,
  divergence checks, augmentation on the device); images/s of the last epoch from metrics.csv.
- **bare**: the limit. Forward + backward + SGD step of the same model on one preloaded batch,
  warmed up, with the allocator tuned (so it pays no page-fault churn), channels_last; no data
  pipeline, no logging, no checks.
- **baseline** (with `--baseline PATH`, another bnlab checkout, e.g. a `git worktree` of an older
  commit): the same measurement as bnlab, for before/after tables from one run.
- **reference** (with `--reference PATH`, a checkout of github.com/davidcpage/cifar10-fast): its
  dawn.py training loop run from that checkout, on the same images, on the CPU in float32 (its
  only change: the loader's `.half()` cast becomes `.float()`). Its code is imported, not copied.

Every row prints img/s of the timed epoch, then the wall time, user and system CPU seconds of the
whole training call (data preloaded, so file reading is not counted; evaluation and checkpoints
are) and the test accuracy reached; then the median ratios bnlab/bare and bnlab/reference.

    python benchmarks/train_throughput.py --data-dir DATA/cifar-10-batches-py \\
        --reference ~/src/cifar10-fast [--width 16] [--images 10240] [--epochs 2] [--repeats 3]

Goals (issue 9): bnlab >= 0.95x bare and >= 1.2x the reference at width 16, batch 512, 2 threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import data_options, train_reference, usage
from _bench import run_child as bench_child


def child_bnlab(args: argparse.Namespace) -> dict:
    import csv

    if args.child == "baseline":  # an older bnlab checkout, measured the same way
        sys.path.insert(0, str(Path(args.baseline).expanduser().resolve()))
    import bnlab
    from bnlab.config import make_config
    from bnlab.data import load_data
    from bnlab.train import train

    assert args.child != "baseline" or Path(bnlab.__file__).is_relative_to(Path(args.baseline).resolve())
    config = make_config("bn", width=args.width, batch_size=args.batch_size, epochs=args.epochs,
                         **data_options(args))
    data = load_data(config.data, args.device if args.device != "auto" else "cpu", seed=config.seed)
    with tempfile.TemporaryDirectory() as d:
        u0, s0 = usage()
        t0 = time.perf_counter()
        train(config, Path(d) / "run", device=args.device, quiet=True, data=data)
        wall = time.perf_counter() - t0
        u1, s1 = usage()
        with open(Path(d) / "run" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return {"img_per_s": float(rows[-1]["img_per_s"]), "wall": wall, "user": u1 - u0, "sys": s1 - s0,
            "test_acc": float(rows[-1]["test_acc"])}


def child_bare(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from bnlab.config import make_config
    from bnlab.device import resolve_device
    from bnlab.models import build_model
    from bnlab.runtime import tune_allocator

    tune_allocator()
    device = resolve_device(args.device)
    config = make_config("bn", width=args.width, batch_size=args.batch_size, dataset="synthetic")
    torch.manual_seed(0)
    model = build_model(config.model).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: oneDNN primitives, allocator pools
        step()
    steps = max(args.images // args.batch_size, 1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    u0, s0 = usage()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall = time.perf_counter() - t0
    u1, s1 = usage()
    return {"img_per_s": steps * args.batch_size / wall, "wall": wall, "user": u1 - u0, "sys": s1 - s0,
            "test_acc": float("nan")}


def child_reference(args: argparse.Namespace) -> dict:
    from bnlab.config import DataSpec

    r = train_reference(args.reference, DataSpec(**data_options(args)), width=args.width, epochs=args.epochs,
                        batch_size=args.batch_size, device=args.device if args.device != "auto" else "cpu")
    return {k: r[k] for k in ("img_per_s", "wall", "user", "sys", "test_acc")}


def run_child(kind: str, args: argparse.Namespace) -> dict:
    argv = ["--child", kind, "--width", str(args.width), "--batch-size", str(args.batch_size),
            "--images", str(args.images), "--test-images", str(args.test_images), "--epochs", str(args.epochs),
            "--device", args.device, "--threads", str(args.threads)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    for opt in ("reference", "baseline"):
        if getattr(args, opt):
            argv += [f"--{opt}", getattr(args, opt)]
    return bench_child(__file__, argv, args.threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: bnlab's synthetic task)")
    ap.add_argument("--reference", default=None, help="checkout of davidcpage/cifar10-fast")
    ap.add_argument("--baseline", default=None, help="another bnlab checkout to measure beside this one")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--images", type=int, default=10240, help="training images (a multiple of 10)")
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=("bnlab", "baseline", "bare", "reference"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        fn = {"bnlab": child_bnlab, "baseline": child_bnlab, "bare": child_bare,
              "reference": child_reference}[args.child]
        print(json.dumps(fn(args)))
        return
    kinds = ["bnlab", "bare"] + (["reference"] if args.reference else []) + (["baseline"] if args.baseline else [])
    print(f"width {args.width}, batch {args.batch_size}, {args.images} images, {args.epochs} epochs, "
          f"{args.threads} threads, device {args.device}, data {args.data_dir or 'synthetic'}", flush=True)
    print(f"{'run':>10} {'img/s':>8} {'wall s':>7} {'user s':>7} {'sys s':>6} {'sys %':>6} {'test acc':>8}", flush=True)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            r = run_child(kind, args)
            results[kind].append(r)
            print(f"{kind:>10} {r['img_per_s']:8.1f} {r['wall']:7.1f} {r['user']:7.1f} {r['sys']:6.1f} "
                  f"{100 * r['sys'] / r['wall']:6.1f} {r['test_acc']:8.4f}", flush=True)
    pairs = list(zip(*(results[k] for k in kinds)))
    ratio_bare = statistics.median(p[0]["img_per_s"] / p[1]["img_per_s"] for p in pairs)
    line = f"median bnlab/bare {ratio_bare:.3f} (goal >= 0.95)"
    if args.reference:
        ratio_ref = statistics.median(p[0]["img_per_s"] / p[2]["img_per_s"] for p in pairs)
        line += f", bnlab/reference {ratio_ref:.3f} (goal >= 1.2)"
    if args.baseline:
        ratio_base = statistics.median(p[0]["img_per_s"] / p[kinds.index("baseline")]["img_per_s"] for p in pairs)
        line += f", bnlab/baseline {ratio_base:.3f}"
    print(line)


if __name__ == "__main__":
    main()
