"""Throughput of `bnlab train`'s step loop vs the pure compute limit of the same model.

bnlab: images/s of the trainer's step loop (augmentation on the device, lr schedule, per-step
dynamics log, divergence check), read from metrics.csv of the second epoch (the first pays warm-up).
Limit: forward + backward + SGD step of the same model on one preloaded random batch, no data
pipeline, no logging. Both run in this process, alternately, so the ratio is fair on a busy machine.

    python benchmarks/train_throughput.py [--width 16] [--batch-size 512] [--steps 8] [--device cpu]

Goal (issue 2): ratio >= 0.95 at width 16, batch 512 on CPU.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bnlab.config import make_config
from bnlab.device import resolve_device
from bnlab.models import build_model
from bnlab.train import train


def compute_limit(config, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(config.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (config.batch_size,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - t)


def bnlab_loop(config, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as d:
        train(config, Path(d) / "run", device=device, quiet=True)
        with open(Path(d) / "run" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return float(rows[-1]["img_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8, help="steps per epoch / timed compute steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    results = []
    for log_every in (1, 0):
        config = make_config("bn", width=args.width, batch_size=args.batch_size, dataset="synthetic",
                             synthetic_train=args.batch_size * args.steps, synthetic_test=args.batch_size,
                             epochs=2, log_every=log_every)
        for _ in range(args.repeats):
            ours = bnlab_loop(config, device)
            limit = compute_limit(config, device, args.steps)
            results.append((log_every, ours, limit))
    print(f"device {device}, width {args.width}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'dynamics log':>12} {'bnlab img/s':>12} {'limit img/s':>12} {'ratio':>6}")
    for log_every, ours, limit in results:
        print(f"{'every step' if log_every else 'off':>12} {ours:12.1f} {limit:12.1f} {ours / limit:6.3f}")
    med = {le: statistics.median(o / lim for l2, o, lim in results if l2 == le) for le in (1, 0)}
    print(f"median ratio: log on {med[1]:.3f}, log off {med[0]:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
