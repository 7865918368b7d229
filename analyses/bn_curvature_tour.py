"""The batch-norm post's curvature story through the Python API, as a notebook would run it.

Trains the post's simple net with BN, freezes its BN (the same weights, BN as a fixed affine map), then
on one fixed evaluation set: the top Hessian eigenvalues of both, the Gauss-Newton part of the frozen
net's Hessian and how much of the Hessian's top it explains, and the overlap of the frozen net's top
eigenvectors with the span of the output-statistic gradients. Every step is one call; every result is
written into OUT as the matching command would write it. The defaults take about a minute on a laptop
CPU on synthetic images (`--data-dir DIR` for CIFAR-10; `--width 64 --subset 0 --device cuda` for the
post's size).

    python analyses/bn_curvature_tour.py --out results/tour
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import bnlab
from bnlab.device import resolve_device
from bnlab.freeze import freeze_checkpoint
from bnlab.outstats.subspace import overlaps
from bnlab.train import train


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="Folder for every result (made if missing).")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder; default: synthetic images.")
    ap.add_argument("--subset", type=int, default=512, help="Training images (0: all).")
    ap.add_argument("--num-samples", type=int, default=120, help="Evaluation images (a multiple of 10).")
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    out, device = Path(args.out), resolve_device(args.device)
    data = ({"dataset": "cifar10", "data_dir": args.data_dir, "subset": args.subset or None} if args.data_dir
            else {"dataset": "synthetic", "synthetic_train": args.subset or 5000, "synthetic_test": 200})

    # 1. A BN net (the post's simple net), then the same weights with BN frozen.
    config = bnlab.make_config("bn", model="simple", width=args.width, epochs=args.epochs, batch_size=64, **data)
    train(config, out / "run_bn", device=device, quiet=True)
    freeze_checkpoint(out / "run_bn" / "final.pt", out / "frozen.pt", device=device)

    # 2. One evaluation set for every analysis; the post's batch-summed units.
    sizes = {"num_samples": args.num_samples, "batch_size": min(64, args.num_samples), "tol": 1e-3,
             "loss_scale": "batch-sum", "device": device}
    found: dict = {}
    hess = {}
    for name, ckpt in (("bn", out / "run_bn" / "final.pt"), ("frozen", out / "frozen.pt")):
        hess[name] = bnlab.hessian(ckpt, top_k=args.top_k, **sizes)
        hess[name].write(out / f"hessian_{name}")
        found[name] = {"hessian": hess[name].eigenvalues.tolist()}

    # 3. The frozen net's Gauss-Newton part G = J^T H_out J: its top space against the Hessian's.
    g = bnlab.hessian(out / "frozen.pt", top_k=args.top_k, matrix="ggn", **sizes)
    g.write(out / "ggn_frozen")
    found["frozen"]["ggn"] = g.eigenvalues.tolist()
    # mean squared overlap of H's top-k eigenvectors with G's top-k space (1: the same space)
    h_vecs, g_vecs = hess["frozen"].eigen.eigenvectors, g.eigen.eigenvectors
    found["frozen"]["overlap_h_g"] = float(overlaps(g_vecs.T, h_vecs.T).mean())

    # 4. The frozen net's top eigenvectors in the span of the output-statistic gradients.
    s = bnlab.output_stats(out / "frozen.pt", eigvecs=str(out / "hessian_frozen"), **sizes)
    s.write(out / "outstats_frozen")
    found["frozen"]["overlap_means_span"] = s.summary["eigen"]["overlap_means"]
    found["frozen"]["overlap_full_span"] = s.summary["eigen"]["overlap_full"]

    found["sharpness_ratio"] = found["frozen"]["hessian"][0] / found["bn"]["hessian"][0]
    (out / "tour.json").write_text(json.dumps(found, indent=1) + "\n")
    print(json.dumps(found, indent=1))
    return found


if __name__ == "__main__":
    main()
