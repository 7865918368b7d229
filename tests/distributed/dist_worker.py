"""One rank of the distributed checks (started by test_dist_numerics.py through `launch`).

    python dist_worker.py OUT_DIR     # under RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT

Joins the gloo group as `bnlab` commands do, computes every check's distributed side and saves
it to OUT_DIR/rank{r}.pt; the test compares with the single-process references. The `bnlab
hessian` / `bnlab outstats` commands run here in-process inside the joined group (one process
start per rank for everything: starting Python with torch is most of a check's cost).
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch
from dist_helpers import (
    HESSIAN_ARGS,
    OUTSTATS_ARGS,
    e2e_config,
    hessian_products,
    one_step,
    step_config,
    tiny_batches,
    tiny_net,
)

from bnlab import distributed
from bnlab.cli import main as cli
from bnlab.rundir import claim_out_dir
from bnlab.train import train


def hessian_checks() -> dict:
    net, batches = tiny_net(), tiny_batches()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = hessian_products(net, batches)
    out["unchanged"] = all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    return out


def refusal_check(folder: Path) -> dict:
    """A refusal on rank 0 alone (its output folder is not empty) must reach every rank."""
    try:
        with distributed.main_context(lambda: claim_out_dir(folder)):
            return {"raised": False}
    except distributed.AgreedError as e:
        return {"raised": True, "message": str(e), "quiet": e.quiet}


def divergence_check(out: Path) -> dict:
    """A non-finite loss on rank 1 alone must stop both ranks at the same step, for the same reason."""
    import bnlab.train as trainer

    real = trainer.train_batches

    def poisoned(*args: object, **kwargs: object):  # noqa: ANN202
        for i, (x, y) in enumerate(real(*args, **kwargs)):
            yield (torch.full_like(x, float("nan")) if i == 1 and distributed.rank() == 1 else x), y

    trainer.train_batches = poisoned
    try:
        res = train(e2e_config("bn", log_every=0), out, device="cpu", quiet=True)
    finally:
        trainer.train_batches = real
    return {"status": res.status, "diverged": res.diverged}


def command(args: list[str]) -> dict:
    """A `bnlab` command run in this process (inside the joined group): exit code and stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli(args)
        except SystemExit as e:
            return {"code": e.code, "stdout": buf.getvalue()}
    return {"code": None, "stdout": buf.getvalue()}


def main(out: Path) -> None:
    with distributed.launch("cpu"):
        r, world = distributed.rank(), distributed.world_size()
        results = {"world": world, "backend": distributed.backend()}
        for name, cfg in (("sync", step_config("bn", sync_bn=True)), ("per_rank", step_config("bn")),
                          ("ghost4", step_config("ghost", ghost_splits=4))):
            results[f"step_{name}"] = one_step(cfg, r, world)
        results["hessian"] = hessian_checks()
        results["refusal"] = refusal_check(out / "not_empty")
        results["train"] = train(e2e_config("bn"), out / "run", device="cpu", quiet=True).metrics
        results["diverge"] = divergence_check(out / "diverged")
        ck = str(out / "ck.pt")
        results["cli_hessian"] = command(["hessian", ck, *HESSIAN_ARGS, "--out", str(out / "hessian")])
        results["cli_outstats"] = command(["outstats", ck, *OUTSTATS_ARGS, "--out", str(out / "outstats")])
        torch.save(results, out / f"rank{r}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
