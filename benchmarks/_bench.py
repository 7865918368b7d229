"""Shared by the training benchmarks: data options, CPU usage, fresh child processes, and the reference loop.

The reference is David Page's cifar10-fast (github.com/davidcpage/cifar10-fast) from a checkout the
user passes: its dawn.py training loop is rebuilt here from its own modules (imported from the
checkout, never copied), on bnlab's copy of the images, in float32 on the CPU (its only change: the
loader's `.half()` cast becomes `.float()`), with its schedule [0, 5, 24] -> [0, 0.4, 0] compressed
to the requested epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any


def usage() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """bnlab DataSpec options of `--data-dir/--images/--test-images` (no folder: the synthetic task)."""
    if args.data_dir:
        return {"data_dir": args.data_dir, "subset": args.images, "test_subset": args.test_images}
    return {"dataset": "synthetic", "synthetic_train": args.images, "synthetic_test": args.test_images}


def run_child(script: str, argv: list[str], threads: int) -> dict[str, Any]:
    """Run `script argv` in a fresh interpreter with `threads` OpenMP threads; its last stdout line is JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_reference(checkout: str | os.PathLike, device: str) -> tuple[Any, Any, Any]:
    """The reference's (torch_backend, core, dawn_utils) modules, its loader yielding float32 on `device`."""
    import numpy as np
    import torch

    np.float = float  # the reference predates numpy 1.24, which removed this alias
    sys.path.insert(0, str(Path(checkout).expanduser().resolve()))
    import core  # noqa: E402  (the reference's own modules)
    import dawn_utils  # noqa: E402
    import torch_backend as tb  # noqa: E402

    tb.device = torch.device(device)

    def float_iter(self):  # noqa: ANN001, ANN202  (dawn.py's DataLoader.__iter__, the dtype its only change)
        if self.set_random_choices:
            self.dataset.set_random_choices()
        return ({"input": x.to(tb.device).float(), "target": y.to(tb.device).long()} for (x, y) in self.dataloader)

    tb.DataLoader.__iter__ = float_iter
    return tb, core, dawn_utils


def train_reference(checkout: str | os.PathLike, spec: Any, *, width: int, epochs: int, batch_size: int,
                    device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Train dawn.py's DavidNet at `width` for `epochs` on bnlab's images of DataSpec `spec`.

    Returns img/s of the last epoch, wall/user/system seconds of the training loop (per-epoch
    evaluation included, as bnlab's), the summed training time and the final test accuracy.
    """
    import numpy as np
    import torch

    from bnlab.data import load_data

    tb, core, dawn_utils = import_reference(checkout, device)
    data = load_data(spec, "cpu", seed=0)
    torch.manual_seed(seed)  # its init and shuffling
    np.random.seed(seed)  # its augmentation choices
    # NHWC uint8 arrays and integer labels, as the reference's own cifar10() returns them.
    dataset = {"train": {"data": data.train_x.permute(0, 2, 3, 1).numpy(), "targets": data.train_y.numpy()},
               "valid": {"data": data.test_x.permute(0, 2, 3, 1).numpy(), "targets": data.test_y.numpy()}}
    w = width
    model = tb.Network(dawn_utils.net(channels={"prep": w, "layer1": 2 * w, "layer2": 4 * w, "layer3": 8 * w}))
    model = model.to(tb.device)
    lr_schedule = core.PiecewiseLinear([0, 5 * epochs / 24, epochs], [0, 0.4, 0])
    mean, std = np.array(tb.cifar10_mean, dtype=np.float32), np.array(tb.cifar10_std, dtype=np.float32)
    transforms = [partial(core.normalise, mean=mean, std=std), partial(core.transpose, source="NHWC", target="NCHW")]
    train_set = list(zip(*core.preprocess(dataset["train"], [partial(core.pad, border=4)] + transforms).values()))
    test_set = list(zip(*core.preprocess(dataset["valid"], transforms).values()))
    train_batches = tb.DataLoader(tb.Transform(train_set, [tb.Crop(32, 32), tb.FlipLR(), tb.Cutout(8, 8)]),
                                  batch_size, shuffle=True, set_random_choices=True, drop_last=True)
    test_batches = tb.DataLoader(test_set, batch_size, shuffle=False, drop_last=False)
    n_batches = len(train_batches)
    opts = [tb.SGD(tb.trainable_params(model).values(), {
        "lr": (lambda step: lr_schedule(step / n_batches) / batch_size),
        "weight_decay": tb.Const(5e-4 * batch_size), "momentum": tb.Const(0.9)})]
    logs, state = core.Table(report=lambda data: False), {tb.MODEL: model, tb.LOSS: tb.x_ent_loss, tb.OPTS: opts}
    timer = core.Timer()
    u0, s0 = usage()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        logs.append(core.union({"epoch": epoch + 1}, tb.train_epoch(state, timer, train_batches, test_batches)))
    wall = time.perf_counter() - t0
    u1, s1 = usage()
    last = logs.log[-1]
    return {"img_per_s": n_batches * batch_size / last["train"]["time"], "wall": wall, "user": u1 - u0,
            "sys": s1 - s0, "train_s": sum(r["train"]["time"] for r in logs.log),
            "test_acc": float(last["valid"]["acc"])}
