"""Paired evidence on the same images: bnlab's baseline recipe, its bag of tricks, and the cifar10-fast loop.

One invocation trains, for every seed of `--seeds`, each of `--runs` (default all three) in a fresh
process (no allocator state or thread setting leaks from one into the next), on the same images
(one class-balanced draw, seed 0, whatever the training seed):

- **baseline**: `bnlab train --recipe baseline` (Page's 24-epoch recipe, its lr knots stretched to
  `--epochs`), DavidNet at `--width`, batch 512;
- **bag-of-tricks**: `bnlab train --recipe bag-of-tricks` (EMA and TTA as the recipe says), the
  knots stretched the same way;
- **reference** (with `--reference PATH`, a checkout of github.com/davidcpage/cifar10-fast): its
  dawn.py loop, its DavidNet at the same width, float32 on the CPU, its own schedule compressed to
  `--epochs` as bnlab's baseline is (benchmarks/_bench.py; its code imported, never copied).

Each bnlab run's final.pt is evaluated again on the whole test set with the trained (raw) weights
and, where the run kept one, the EMA, each without and with TTA, so that what each trick adds at
evaluation is visible; "reported" is what the run itself reports. Per row: those accuracies, the
wall time of the training call (per-epoch evaluation included), the summed training time and img/s
of the last epoch. Results go to OUT/recipe_pairs.json and OUT/recipe_pairs.md, rewritten after
every run (an interrupted invocation keeps what finished). `--parallel` trains a seed's runs at the
same time, each in its own process with `--threads` threads: for a machine too loaded or too slow to
run them one after another; their times are then of runs sharing the cores, comparable with each
other but not with runs made alone.

    python benchmarks/recipe_pairs.py --data-dir DATA/cifar-10-batches-py --reference ~/src/cifar10-fast \\
        --width 16 --epochs 10 --seeds 0 --threads 2 --out results/recipe_pairs
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from _bench import data_options, run_child, train_reference, usage

RUNS = ("baseline", "bag-of-tricks", "reference")
ACC_KEYS = ("reported", "raw", "raw_tta", "ema", "ema_tta")
SYNTHETIC_IMAGES = (2048, 512)  # train/test images of the synthetic task when --images/--test-images are unset


def _args_data(args: argparse.Namespace) -> dict[str, Any]:
    if not args.data_dir:  # the synthetic task needs sizes
        args = argparse.Namespace(**{**vars(args), "images": args.images or SYNTHETIC_IMAGES[0],
                                     "test_images": args.test_images or SYNTHETIC_IMAGES[1]})
    return data_options(args)


def evaluations(final_pt: Path, data: Any, device: str) -> dict[str, float | None]:
    """Test accuracy of a bnlab checkpoint's raw and EMA weights (None: no EMA), each plain and with TTA."""
    import torch

    from bnlab.checkpoint import load_checkpoint, read_checkpoint
    from bnlab.train import evaluate

    has_ema = "ema" in read_checkpoint(final_pt)
    out: dict[str, float | None] = {}
    for weights in ("raw", "ema"):
        ck = load_checkpoint(final_pt, device, weights) if weights == "raw" or has_ema else None
        for tta in (False, True):
            out[weights + ("_tta" if tta else "")] = None if ck is None else evaluate(
                ck.model, data, dataclasses.replace(ck.config, tta=tta), torch.device(device))[1]
    return out


def recipe(kind: str, args: argparse.Namespace) -> Any:
    """The validated TrainConfig of bnlab run `kind` at the benchmark's setting."""
    from bnlab.recipes import recipe_config

    return recipe_config(kind, width=args.width, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                         log_every=0, **_args_data(args))


def child_bnlab(args: argparse.Namespace) -> dict[str, Any]:
    import csv

    from bnlab.data import load_data
    from bnlab.train import train

    config = recipe(args.child, args)
    data = load_data(config.data, args.device, seed=0)  # the same images for every seed and run
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        u0, s0 = usage()
        t0 = time.perf_counter()
        train(config, run, device=args.device, quiet=True, data=data)
        wall = time.perf_counter() - t0
        u1, s1 = usage()
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        accs = evaluations(run / "final.pt", data, args.device)
    return {"img_per_s": float(rows[-1]["img_per_s"]), "wall": wall, "user": u1 - u0, "sys": s1 - s0,
            "train_s": sum(float(r["train_time"]) for r in rows), "reported": float(rows[-1]["test_acc"]), **accs}


def child_reference(args: argparse.Namespace) -> dict[str, Any]:
    from bnlab.config import DataSpec

    r = train_reference(args.reference, DataSpec(**_args_data(args)), width=args.width, epochs=args.epochs,
                        batch_size=args.batch_size, device=args.device, seed=args.seed)
    return {**{k: r[k] for k in ("img_per_s", "wall", "user", "sys", "train_s")}, "reported": r["test_acc"],
            "raw": r["test_acc"], "raw_tta": None, "ema": None, "ema_tta": None}


def child_argv(kind: str, seed: int, args: argparse.Namespace) -> list[str]:
    argv = ["--child", kind, "--child-seed", str(seed), "--width", str(args.width), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads)]
    for opt in ("data_dir", "images", "test_images", "reference"):
        if getattr(args, opt) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    return argv


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", info.read_text() if info.is_file() else "", re.MULTILINE)
    return names[0].strip() if names else platform.machine()


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def markdown(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, then, with several seeds, each run's reported accuracy (mean ± s.e.)
    and mean wall time."""
    from bnlab.ablate import mean_se

    lines = [f"{settings['date']}, {settings['cpu']}, {settings['threads']} threads, device {settings['device']}, "
             f"width {settings['width']}, {settings['images']} training / {settings['test_images']} test images "
             f"({settings['data']}), {settings['epochs']} epochs, batch {settings['batch_size']}, "
             f"seeds {settings['seeds']}"
             + (", the runs of a seed trained at the same time" if settings.get("parallel") else ""), "",
             "| run | seed | reported | raw | raw + TTA | EMA | EMA + TTA | wall s | train s | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['seed']} | " + " | ".join(_pct(r[k]) for k in ACC_KEYS)
                     + f" | {r['wall']:.0f} | {r['train_s']:.0f} | {r['img_per_s']:.1f} |")
    kinds = list(dict.fromkeys(r["run"] for r in rows))
    if len({r["seed"] for r in rows}) > 1:
        lines += ["", "| run | seeds | reported, mean ± s.e. | wall s, mean |", "|---|---|---|---|"]
        for k in kinds:
            mine = [r for r in rows if r["run"] == k]
            m, se = mean_se([r["reported"] for r in mine])
            lines.append(f"| {k} | {len(mine)} | {100 * m:.2f} ± {100 * se:.2f}% | "
                         f"{sum(r['wall'] for r in mine) / len(mine):.0f} |")
    return "\n".join(lines) + "\n"


def write(out: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe_pairs.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    (out / "recipe_pairs.md").write_text(markdown(settings, rows))


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: bnlab's synthetic task)")
    ap.add_argument("--reference", default=None, help="checkout of davidcpage/cifar10-fast (adds its row)")
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=None, help="default: all (reference if given)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--images", type=int, default=None, help="training images (default: all; synthetic 2048)")
    ap.add_argument("--test-images", type=int, default=None, help="test images (default: all; synthetic 512)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", action="store_true",
                    help="train a seed's runs at the same time (each its own --threads; times then shared)")
    ap.add_argument("--out", default=None, help="folder for recipe_pairs.json and recipe_pairs.md")
    ap.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--child-seed", dest="seed", type=int, default=0, help=argparse.SUPPRESS)
    return ap, ap.parse_args(argv)


def _refuse(ap: argparse.ArgumentParser, message: str) -> None:
    ap.exit(2, f"{ap.prog}: error: {message}\n")  # one line, without argparse's usage block


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The runs to make; a bad option is one line on stderr and exit code 2."""
    for name in ("width", "epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            _refuse(ap, f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        _refuse(ap, f"--seeds must be distinct non-negative integers, got {args.seeds}")
    if not args.out:
        _refuse(ap, "--out is required")
    runs = args.runs or [r for r in RUNS if r != "reference" or args.reference]
    if "reference" in runs:
        ref = Path(args.reference or "").expanduser()
        if not args.reference or not (ref / "torch_backend.py").is_file() or not (ref / "dawn_utils.py").is_file():
            _refuse(ap, f"--reference {args.reference!r} is not a cifar10-fast checkout (no torch_backend.py/"
                     "dawn_utils.py); pass one, or leave 'reference' out of --runs")
    from bnlab.errors import BnlabError

    for kind in runs:  # refused here in one line, not in a child after the runs before it
        try:
            if kind != "reference":
                recipe(kind, args)
        except BnlabError as e:
            _refuse(ap, f"{kind}: {e}")
    return runs


def main(argv: list[str] | None = None) -> None:
    ap, args = parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child_reference(args) if args.child == "reference" else child_bnlab(args)))
        return
    runs = check_args(ap, args)
    import torch  # for the record only

    settings = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "cpu": _cpu_name(), "threads": args.threads, "device": args.device, "torch": torch.__version__,
                "python": sys.version.split()[0], "width": args.width, "epochs": args.epochs,
                "batch_size": args.batch_size, "images": args.images or ("all" if args.data_dir else
                                                                         SYNTHETIC_IMAGES[0]),
                "test_images": args.test_images or ("all" if args.data_dir else SYNTHETIC_IMAGES[1]),
                "data": args.data_dir or "synthetic", "seeds": args.seeds, "runs": runs,
                "reference": args.reference,
                "parallel": args.parallel}
    out, rows = Path(args.out), []
    print(f"{'run':>14} {'seed':>4} " + " ".join(f"{k:>9}" for k in ACC_KEYS) + f" {'wall s':>7} {'img/s':>7}",
          flush=True)
    def position(row: dict[str, Any]) -> tuple[int, int]:
        return args.seeds.index(row["seed"]), runs.index(row["run"])

    for seed in args.seeds:
        with ThreadPoolExecutor(len(runs) if args.parallel else 1) as pool:  # threads that wait on children
            futures = {pool.submit(run_child, __file__, child_argv(kind, seed, args), args.threads): kind
                       for kind in runs}
            for future in as_completed(futures):  # each row kept as soon as its run ends
                r = {"run": futures[future], "seed": seed, **future.result()}
                rows = sorted([*rows, r], key=position)
                write(out, settings, rows)
                print(f"{r['run']:>14} {seed:>4} " + " ".join(f"{_pct(r[k]):>9}" for k in ACC_KEYS)
                      + f" {r['wall']:7.1f} {r['img_per_s']:7.1f}", flush=True)
    print(f"wrote {out / 'recipe_pairs.json'} and {out / 'recipe_pairs.md'}")


if __name__ == "__main__":
    main()
