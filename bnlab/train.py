"""The trainer: DavidNet checkpoints in every variant, with a per-step dynamics log.

`train(config, out_dir)` is the Python API; `bnlab train` is a thin CLI over it. A run directory
holds config.json, status.json, metrics.csv, dynamics.csv (see `bnlab.dynamics.log`), last.pt
(every epoch, for resuming), ckpt_epoch_NNN.pt (every --save-every epochs) and final.pt.

Reproducibility: the model is initialised from the seed; data order and augmentation depend only
on (seed, epoch) (`bnlab.data.train_batches`), and checkpoints are taken at epoch boundaries, so
a resumed run on CPU ends bit-identical to an uninterrupted one.

Crash safety: at the end of an epoch the files it promises are written first (ckpt_epoch_NNN.pt,
final.pt) and last.pt last; last.pt is the commit point. A run killed anywhere resumes from the
last committed epoch and redoes (bit-identically) whatever had not been committed.

Interruption (Ctrl-C, SIGTERM: see `bnlab.interrupt`): status.json records "interrupted" with the
step reached and the epoch a resume starts from, and `TrainingInterrupted` (a KeyboardInterrupt) says
how to resume; what a resume needs is last.pt, already committed.

Progress: per epoch a bar on a terminal (elsewhere a line every `progress_every` seconds), with the
whole run's ETA; a long CPU run says at its start what it will take.

Divergence (a non-finite loss, gradient or BN buffer) is a result: training stops before the bad
update, the last finite state (weights and buffers) is saved as final.pt with status "diverged" and
the step/lr recorded.

Several processes (`torchrun --nproc-per-node N -m bnlab train ...`, or a process group the caller
initialised): every rank builds the same global batch from (seed, epoch) and trains on its
contiguous slice under DistributedDataParallel, so the images of a step do not depend on N; what BN
computes then is `bnlab.ddp`'s business (per-rank statistics, or the global batch's with sync_bn).
Rank 0 alone holds the run-directory lock and writes every file; the divergence check and the
epoch's metrics are reduced over the ranks; the test set is evaluated sharded. The world size is
not part of the config (it is recorded in the runtime record), so a run resumes with any N.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import ddp, distributed
from .checkpoint import load_weights, read_checkpoint, remove_stale_temp_files, save_checkpoint
from .config import TrainConfig
from .data import Data, eval_batches, load_data, train_batches
from .data.dataset import data_inputs
from .dynamics.log import GRADCORR_FILE, truncate_csv
from .dynamics.tracker import DynamicsTracker
from .ema import WeightEMA
from .errors import BnlabError
from .io.jsonfile import read_json, write_json
from .io.textfile import write_dict_rows
from .models import build_model
from .norms import calibrate_frozen_norms
from .optim import param_groups
from .progress import Progress, RunEta, eta_text
from .rundir import check_out_dir, claim_out_dir, output_path
from .runtime import runtime_info, tune_allocator
from .schedule import lr_at
from .tta import eval_logits
from .whitening import WHITEN_IMAGES, fit_whitening, whitening_layers

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                  "train_time", "eval_time", "img_per_s")
DYNAMICS_FLUSH_SECONDS = 20.0  # the dynamics log reaches disk at least this often during an epoch
PROGRESS_EVERY_SECONDS = 30.0  # off a terminal, a progress line at least this often within an epoch
SLOW_CPU_WIDTH = 32  # CPU runs at this width or more say at their start what they will take
ESTIMATE_AFTER_STEPS = 2  # ... measured on this many steps


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM; status.json records it and `message` says how to resume."""

    def __init__(self, run_dir: Path, signal_name: str, step: int, epochs: int, resume_epoch: int,
                 steps_per_epoch: int, exit_code: int) -> None:
        super().__init__(signal_name)
        self.run_dir, self.signal_name, self.step, self.epochs = run_dir, signal_name, step, epochs
        self.resume_epoch, self.steps_per_epoch, self.exit_code = resume_epoch, steps_per_epoch, exit_code
        self.args = (self.message,)  # what a notebook's traceback shows

    @property
    def resume_command(self) -> str:
        return f"bnlab train --resume {self.run_dir}"

    @property
    def message(self) -> str:
        e, s = divmod(self.step, self.steps_per_epoch)
        where = f"epoch {e + 1}/{self.epochs}, step {s}/{self.steps_per_epoch}" if s else f"end of epoch {e}"
        start = (f"from epoch {self.resume_epoch} (last.pt)" if self.resume_epoch
                 else "from the start (no epoch had finished)")
        return (f"interrupted ({self.signal_name}) at step {self.step} ({where}); status.json records it. "
                f"Resume with: {self.resume_command}  (continues {start})")


@dataclass
class RunResult:
    status: str  # "finished" | "diverged" | "stopped" (stop_after_epoch reached); see TrainingInterrupted
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # last epoch's row
    diverged: dict[str, Any] | None = None


def _autocast(config: TrainConfig, device: torch.device):  # noqa: ANN202
    if device.type == "cuda" and config.amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and config.amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, config: TrainConfig, device: torch.device,
             batch_size: int = 1024, sharded: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy) on the test set, BN in eval mode (with config.tta: of the mean logits of each
    image and its mirror).

    sharded: every rank of the process group evaluates its contiguous part and the sums are reduced
    (call it on every rank then).
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    test_x, test_y = data.test_x, data.test_y
    if sharded:
        part = distributed.shard_range(len(test_y), distributed.rank(), distributed.world_size())
        test_x, test_y = test_x[part.start:part.stop], test_y[part.start:part.stop]
    for x, y in eval_batches(test_x, test_y, batch_size, data):
        with _autocast(config, device):
            out = eval_logits(model, x.contiguous(memory_format=torch.channels_last), config.tta).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum", label_smoothing=config.label_smoothing)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    if sharded:
        totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double()]))
        loss_sum, correct = totals[0], totals[1].long()
    n = len(data.test_y)
    return loss_sum.item() / n, correct.item() / n


def init_model(config: TrainConfig, data: Data, device: torch.device) -> nn.Module:
    """The run's model at initialisation (seeded; frozen norms calibrated), channels_last on `device`."""
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(device)
    if whitening_layers(model):  # fixed filters from the first (unaugmented) training images, as Page's
        x, _ = next(eval_batches(data.train_x[:WHITEN_IMAGES], data.train_y[:WHITEN_IMAGES], WHITEN_IMAGES, data))
        fit_whitening(model, x)
    if config.model.norm == "frozen":
        # Statistics of (unaugmented) training data at initialisation, fixed for good.
        g = torch.Generator(device=data.device).manual_seed(config.seed)
        n = min(len(data.train_y), max(config.batch_size, 512))
        idx = torch.randperm(len(data.train_y), generator=g, device=data.device)[:n]
        x, _ = next(eval_batches(data.train_x[idx], data.train_y[idx], n, data))
        calibrate_frozen_norms(model, x)
    return model.to(memory_format=torch.channels_last)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_dict_rows(path, METRIC_COLUMNS, rows)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@dataclass
class _Run:
    """Everything one training run holds while it runs."""

    config: TrainConfig
    out: Path
    device: torch.device
    data: Data
    model: nn.Module
    opt: torch.optim.Optimizer
    steps_per_epoch: int
    quiet: bool
    tracker: DynamicsTracker | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    runtime: dict[str, Any] = field(default_factory=dict)
    forward: nn.Module | None = None  # what a training step calls: the model, or DDP around it
    rank: int = 0
    world: int = 1
    committed_epoch: int = 0  # what last.pt holds: where a resume starts
    committed_step: int = 0
    progress_every: float | None = PROGRESS_EVERY_SECONDS
    eta: RunEta | None = None
    # status.json and the epoch's files are written under this lock: an interrupt recorded from
    # another thread (`bnlab.interrupt`) waits for a commit in progress and never interleaves with it.
    files_lock: threading.RLock = field(default_factory=threading.RLock)
    ema: WeightEMA | None = None  # the averaged weights the run evaluates (config.ema_momentum > 0)

    def snapshot(self, status: str, diverged: dict[str, Any] | None = None) -> dict[str, Any]:
        snap = {"config": self.config.to_dict(), "seed": self.config.seed, "device": str(self.device),
                "runtime": self.runtime, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": _rng_state(), "epoch": self.epoch, "step": self.step, "metrics": self.metrics,
                "status": status, "diverged": diverged}
        if self.ema is not None:
            snap["ema"] = self.ema.state_dict()
        return snap

    def write_status(self, status: str, diverged: dict[str, Any] | None = None,
                     interrupted: dict[str, Any] | None = None) -> None:
        record: dict[str, Any] = {"status": status, "epoch": self.epoch, "step": self.step,
                                  "total_train_time": sum(m["train_time"] for m in self.metrics),
                                  "total_eval_time": sum(m["eval_time"] for m in self.metrics)}
        if diverged is not None:
            record["diverged"] = diverged
        if interrupted is not None:  # epoch/step: the committed state (last.pt) a resume starts from
            record.update(epoch=self.committed_epoch, step=self.committed_step, interrupted=interrupted)
        with self.files_lock:
            write_json(self.out / "status.json", record)

    def record_interrupt(self, signal_name: str, exit_code: int) -> TrainingInterrupted:
        """Write status "interrupted" (rank 0) and describe the interruption."""
        info = TrainingInterrupted(self.out, signal_name, self.step, self.config.epochs, self.committed_epoch,
                                   self.steps_per_epoch, exit_code)
        if distributed.is_main():
            self.write_status("interrupted", interrupted={
                "signal": signal_name, "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                "resume_from_epoch": self.committed_epoch, "resume_command": info.resume_command})
        return info

    def flush_dynamics(self) -> None:
        if self.tracker is not None:
            self.tracker.flush(self.out / "dynamics.csv", self.out / "dynamics_channels.csv", self.out / GRADCORR_FILE)


def train(config: TrainConfig | None, out_dir: str | Path, *, device: str | torch.device = "auto",
          resume: bool = False, force: bool = False, quiet: bool = False,
          stop_after_epoch: int | None = None, data: Data | None = None,
          progress_every: float | None = PROGRESS_EVERY_SECONDS) -> RunResult:
    """Train `config` into run directory `out_dir` (or continue it with resume=True).

    resume: continue from out_dir/last.pt with the run's own config (the `config` argument is
    ignored then and may be None). stop_after_epoch: return after that epoch as if interrupted
    (the run stays resumable). data: preloaded data to reuse (must match config.data).
    progress_every: off a terminal, seconds between progress lines within an epoch (None: at its end only).
    A KeyboardInterrupt (Ctrl-C) is recorded in status.json and re-raised as `TrainingInterrupted`.
    In a process group of several ranks every rank calls this (see the module docs); CUDA means
    this rank's GPU (cuda:LOCAL_RANK).
    """
    tune_allocator()
    out = output_path(out_dir)  # an empty name is refused, not read as '.'
    dev = distributed.rank_device(device)
    world = distributed.world_size()
    quiet = quiet or not distributed.is_main()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
    payload = None
    if resume:
        config = distributed.on_main(lambda: _resume_point(out)[0])
    if config is None:
        raise BnlabError("train() needs a config unless resume=True")
    distributed.agree(lambda: (config.validate(), ddp.check_split(config, world)))  # rank 0 prints a refusal
    inputs = data_inputs(config.data)  # found before loading: a tarball unpacks beside itself
    if not resume:  # nothing is created or emptied for a run that would write over its own data
        distributed.on_main(lambda: check_out_dir(out, force=force, resumable=True, inputs=inputs))
    if data is None:
        data = distributed.agree(lambda: load_data(config.data, dev, seed=config.seed))
    steps_per_epoch = len(data.train_y) // config.batch_size
    if steps_per_epoch == 0:
        raise BnlabError(f"batch size {config.batch_size} is larger than the training set ({len(data.train_y)})")
    with distributed.main_context(lambda: claim_out_dir(out, force=force, resume=resume, resumable=True,
                                                        inputs=inputs)):
        if resume:  # re-read under the lock: the state another process may have left is final now
            config, payload = distributed.on_main(lambda: _resume_point(out))
        run = _open_run(config, out, dev, data, steps_per_epoch, payload, quiet)
        run.progress_every = progress_every
        if resume and not quiet:
            print(f"resuming from epoch {run.epoch} (last.pt)" if payload is not None else
                  "resuming: no epoch had finished (no last.pt); starting again from epoch 1", flush=True)
        if payload is not None and payload.get("status") in ("finished", "diverged"):
            result = _complete_committed(run, payload)
        else:
            _ACTIVE.append(run)
            try:
                result = _train_epochs(run, stop_after_epoch)
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt as e:  # Ctrl-C, or `bnlab.interrupt.Interrupt` (SIGINT/SIGTERM)
                raise run.record_interrupt(getattr(e, "signal_name", "SIGINT"),
                                           getattr(e, "exit_code", 130)) from None
            finally:
                _ACTIVE.remove(run)
    distributed.barrier()  # no rank returns before rank 0 has written and released the run
    return result


# The run this process is training, for an interrupt recorded from a watcher thread while the main
# thread is stuck in a long C++ call (`bnlab.interrupt`); one entry at most.
_ACTIVE: list[_Run] = []


def record_active_interrupt(signal_name: str, exit_code: int) -> TrainingInterrupted | None:
    """Record the interruption of the run in progress from another thread, for a caller that ends the process
    next: the run's files stay locked, so the main thread writes nothing after the record. None if none trains."""
    if not _ACTIVE:
        return None
    run = _ACTIVE[-1]
    run.files_lock.acquire()  # never released: the process ends
    return run.record_interrupt(signal_name, exit_code)


def _resume_point(out: Path) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The run's config and its last committed state (None: killed before its first epoch ended)."""
    last = out / "last.pt"
    if not last.exists():
        if (out / "config.json").is_file():  # nothing committed yet: start again, same config
            return TrainConfig.from_dict(read_json(out / "config.json", "run config")), None
        raise BnlabError(f"nothing to resume in {out}: no last.pt (start it without --resume)")
    payload = read_checkpoint(last, map_location="cpu")
    for key in ("optimizer", "rng", "epoch", "step", "metrics"):
        if key not in payload:
            raise BnlabError(f"{last} is not a training checkpoint (no {key!r}: written by `bnlab freeze`?); "
                             "nothing to resume")
    config = TrainConfig.from_dict(payload["config"])
    bad = _uncommittable(payload, config)
    if bad:
        raise BnlabError(f"{last} is not a consistent training checkpoint ({bad}; hand-edited?); "
                         "start the run again with --force")
    return config, payload


def _uncommittable(payload: dict[str, Any], config: TrainConfig) -> str | None:
    """What makes a last.pt's training state impossible for its own config, or None."""
    epoch, step, status, metrics = payload["epoch"], payload["step"], payload.get("status"), payload["metrics"]
    if not 0 <= epoch <= config.epochs:
        return f"epoch {epoch} of a {config.epochs}-epoch run"
    if step < 0:
        return f"step {step}"
    if status not in ("running", "finished", "diverged"):
        return f"status {status!r}"
    if (status == "finished") != (epoch == config.epochs) and status != "diverged":
        return f"status {status} at epoch {epoch} of {config.epochs}"
    if len(metrics) not in (epoch, epoch + 1) or (len(metrics) == epoch + 1 and status != "diverged"):
        return f"{len(metrics)} metric rows for {epoch} epochs"
    for row in metrics:
        if set(row) != set(METRIC_COLUMNS) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in row.values()):
            return f"a metric row without exactly the columns {', '.join(METRIC_COLUMNS)} as numbers"
    rng = payload["rng"].get("torch")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        return "no torch generator state in rng"
    opt = payload["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "an optimizer state without state and param_groups"
    if config.ema_momentum > 0 and not isinstance(payload.get("ema"), dict):
        return "no EMA weights for a run trained with --ema"
    return None


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any], rng: torch.Tensor, where: Path) -> None:
    """Restore the optimizer and generator of a resumed run; a state that does not fit is one line."""
    try:
        opt.load_state_dict(state)
        for group in opt.param_groups:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None and (buf.shape != p.shape or buf.dtype != p.dtype):
                    raise ValueError(f"a momentum buffer of shape {tuple(buf.shape)} for a parameter of shape "
                                     f"{tuple(p.shape)}")
        torch.set_rng_state(rng)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise BnlabError(f"{where / 'last.pt'}: its optimizer or generator state does not fit this run ({first}); "
                         "start the run again with --force") from None


def _open_run(config: TrainConfig, out: Path, dev: torch.device, data: Data, steps_per_epoch: int,
              payload: dict[str, Any] | None, quiet: bool) -> _Run:
    world, main = distributed.world_size(), distributed.is_main()
    model = ddp.for_ranks(init_model(config, data, dev), config, world)
    opt = torch.optim.SGD(param_groups(model, config), lr=0.0, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    run = _Run(config, out, dev, data, model, opt, steps_per_epoch, quiet, runtime=runtime_info(dev),
               forward=model, rank=distributed.rank(), world=world)
    if config.ema_momentum > 0:
        run.ema = WeightEMA(model, config.ema_momentum, config.ema_every)
    if payload is not None:
        load_weights(model, payload["model"], out / "last.pt")
        if run.ema is not None:
            load_weights(run.ema.model, payload["ema"], out / "last.pt")
        _load_optimizer(opt, payload["optimizer"], payload["rng"]["torch"], out)
        run.epoch, run.step, run.metrics = payload["epoch"], payload["step"], list(payload["metrics"])
        run.committed_epoch, run.committed_step = run.epoch, run.step
    record = ddp.describe(config, world, payload.get("runtime") if payload is not None else None, run.epoch)
    if record is not None:
        run.runtime["distributed"] = record

    def prepare_files() -> None:  # rank 0's
        remove_stale_temp_files(out)  # of writes a kill interrupted; we own the folder now
        if payload is None:
            for name in ("dynamics.csv", "dynamics_channels.csv", GRADCORR_FILE, "metrics.csv"):  # from scratch
                (out / name).unlink(missing_ok=True)
            write_json(out / "config.json", config.to_dict())
            run.write_status("running")
        else:
            for name in ("dynamics.csv", "dynamics_channels.csv", GRADCORR_FILE):
                truncate_csv(out / name, run.step)

    distributed.on_main(prepare_files)
    if config.log_every and main:
        run.tracker = DynamicsTracker(model, channels=config.log_channels, grad_lags=config.log_grad_lags)
    if world > 1:
        run.forward = ddp.wrap(model, dev)
    return run


def _complete_committed(run: _Run, payload: dict[str, Any]) -> RunResult:
    """A resumed run whose last.pt is final: write any promised file a kill left unwritten (rank 0)."""
    status, diverged = payload["status"], payload.get("diverged")
    distributed.on_main(lambda: _write_promised(run, payload, status, diverged))
    return RunResult(status, run.out, run.metrics[-1] if run.metrics else {}, diverged)


def _write_promised(run: _Run, payload: dict[str, Any], status: str, diverged: dict[str, Any] | None) -> None:
    if not (run.out / "final.pt").is_file():
        save_checkpoint(run.out / "final.pt", {k: v for k, v in payload.items()
                                               if k not in ("format", "format_version", "versions")})
    e = run.epoch
    if status == "finished" and run.config.save_every and e % run.config.save_every == 0:
        if not (run.out / f"ckpt_epoch_{e:03d}.pt").is_file():
            save_checkpoint(run.out / f"ckpt_epoch_{e:03d}.pt", run.snapshot(status))
    _write_metrics(run.out / "metrics.csv", run.metrics)
    run.write_status(status, diverged)


def _train_epochs(run: _Run, stop_after_epoch: int | None) -> RunResult:
    config = run.config
    run.model.train()
    row: dict[str, Any] = {}
    run.eta = RunEta(config.epochs * run.steps_per_epoch, run.step, run.steps_per_epoch)
    while run.epoch < config.epochs:
        epoch = run.epoch
        bar = Progress(run.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", quiet=run.quiet, unit="step",
                       heartbeat=run.progress_every)
        t0 = time.perf_counter()
        stats, diverged = _train_one_epoch(run, epoch, bar)
        ddp.average_running_stats(run.model, config)
        if run.ema is not None:  # its BN statistics averaged each rank's own: agree on them too
            ddp.average_running_stats(run.ema.model, config)
        train_time = time.perf_counter() - t0
        bar.close()
        t1 = time.perf_counter()
        evaluated = run.model if run.ema is None else run.ema.model
        test_loss, test_acc = evaluate(evaluated, run.data, config, run.device, sharded=run.world > 1)
        eval_time = time.perf_counter() - t1
        run.eta.add_eval(eval_time)
        seen = max(stats["seen"], 1)
        row = {"epoch": epoch + 1, "step": run.step, "lr": stats["lr"],
               "train_loss": stats["loss_sum"] / seen, "train_acc": stats["correct"] / seen,
               "test_loss": test_loss, "test_acc": test_acc, "train_time": round(train_time, 3),
               "eval_time": round(eval_time, 3), "img_per_s": round(stats["seen"] / max(train_time, 1e-9), 1)}
        run.metrics.append(row)
        if not run.quiet:
            left = run.eta.remaining() if epoch + 1 < config.epochs else None
            print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                  f"test loss {test_loss:.4f} acc {test_acc:.4f} | {train_time:.1f}s train "
                  f"{eval_time:.1f}s eval" + (f" | run ETA {eta_text(left)}" if left is not None else ""),
                  flush=True)
        if diverged is not None:
            distributed.on_main(lambda: _commit_epoch(run, "diverged", diverged))  # noqa: B023
            if not run.quiet:
                print(f"diverged at step {diverged['step']} (epoch {diverged['epoch']:.2f}, lr {diverged['lr']:.4g}):"
                      f" {diverged['reason']}; last finite weights saved to final.pt", flush=True)
            return RunResult("diverged", run.out, row, diverged)
        run.epoch = epoch + 1
        status = "finished" if run.epoch == config.epochs else "running"
        distributed.on_main(lambda: _commit_epoch(run, status))  # noqa: B023
        if stop_after_epoch is not None and run.epoch >= stop_after_epoch and status != "finished":
            return RunResult("stopped", run.out, row)
    return RunResult("finished", run.out, run.metrics[-1] if run.metrics else row)


def _commit_epoch(run: _Run, status: str, diverged: dict[str, Any] | None = None) -> None:
    """Write the epoch's files; last.pt goes last (the commit point a resume starts from)."""
    with run.files_lock:
        run.flush_dynamics()
        _write_metrics(run.out / "metrics.csv", run.metrics)
        snap = run.snapshot(status, diverged)
        if status == "running" or status == "finished":
            if run.config.save_every and run.epoch % run.config.save_every == 0:
                save_checkpoint(run.out / f"ckpt_epoch_{run.epoch:03d}.pt", snap)
        if status in ("finished", "diverged"):
            save_checkpoint(run.out / "final.pt", snap)
        save_checkpoint(run.out / "last.pt", snap)
        run.committed_epoch, run.committed_step = run.epoch, run.step
    run.write_status(status, diverged)


def _say_cpu_cost(run: _Run) -> None:
    """On CPU at a large width, once the first steps are timed: what the whole run will take, and what finishes."""
    eta = run.eta
    width = run.config.model.width
    if (run.quiet or run.device.type != "cpu" or width < SLOW_CPU_WIDTH or eta is None
            or eta.timed_steps != ESTIMATE_AFTER_STEPS):
        return
    left = eta.remaining() or 0.0
    print(f"note: on this CPU the run takes about {eta_text(left)} more ({eta.seconds_per_step:.3g} s/step over the "
          f"first {eta.timed_steps} steps, {eta.total - eta.done} steps left); `--width 16` (~{(width / 16) ** 2:.0f}x "
          "less compute) or `bnlab reproduce --scale cpu` finish on a CPU", file=sys.stderr, flush=True)


def _train_one_epoch(run: _Run, epoch: int, bar: Progress) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One epoch of SGD steps. Returns running totals and, if it diverged, where and why."""
    config, model, opt, dev = run.config, run.model, run.opt, run.device
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    # Buffers (BN running stats) change in the forward pass; keep the pre-step values so that a
    # diverging step can be undone completely.
    saved_buffers = [b.clone() for b in buffers]
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.float64)
    seen, lr, t_flush = 0, 0.0, time.perf_counter()
    t_step = t_flush
    batches = train_batches(run.data, config.data, config.batch_size, config.seed, epoch, shard=(run.rank, run.world))
    for i, (x, y) in enumerate(batches):
        frac = epoch + (i + 1) / run.steps_per_epoch  # the lr at the end of this step
        lr = lr_at(config, frac)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if buffers:
            torch._foreach_copy_(saved_buffers, buffers)
        with _autocast(config, dev):
            logits = run.forward(x.contiguous(memory_format=torch.channels_last)).float()
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if run.world == 1:
            reason, step_acc, n = _non_finite(loss, params, buffers), None, len(y)
        else:  # agreed over the ranks; loss and accuracy of the global batch from then on
            reason, loss, step_acc = _non_finite_on_any_rank(loss, logits, y, params, buffers)
            n = config.batch_size
        if reason is not None:
            if buffers:
                torch._foreach_copy_(buffers, saved_buffers)
            diverged = {"step": run.step + 1, "epoch": frac, "lr": lr, "loss": float(loss.detach()),
                        "reason": reason}
            return {"loss_sum": loss_sum.item(), "correct": correct.item(), "seen": seen, "lr": lr}, diverged
        log = run.tracker is not None and (run.step + 1) % config.log_every == 0
        if run.tracker is not None and run.tracker.grad_lags:
            run.tracker.observe_grads(log)  # every step: the lags are optimizer steps, not logged ones
        if log:
            run.tracker.before_step()
        opt.step()
        run.step += 1
        if run.ema is not None:
            run.ema.update(model, run.step)
        with torch.no_grad():
            acc = (logits.argmax(1) == y).float().mean() if step_acc is None else step_acc
            loss_sum += loss.detach() * n
            correct += acc * n
        seen += n
        if log:
            run.tracker.after_step(run.step, frac, lr, loss, acc)
        now = time.perf_counter()
        run.eta.add_step(now - t_step)
        t_step = now
        _say_cpu_cost(run)
        if run.tracker is not None and now - t_flush > DYNAMICS_FLUSH_SECONDS:
            with run.files_lock:
                run.flush_dynamics()
            t_flush = time.perf_counter()
        # Called at once or never (only when the bar redraws), so binding the loop variables is fine.
        bar.update(1, lambda: f"loss {loss.item():.3f} acc {acc.item():.3f} lr {lr:.4g} | run ETA "  # noqa: B023
                              f"{eta_text(run.eta.remaining())}")
    return {"loss_sum": loss_sum.item(), "correct": correct.item(), "seen": seen, "lr": lr}, None


def _non_finite(loss: torch.Tensor, params: list[torch.Tensor], buffers: list[torch.Tensor]) -> str | None:
    """Why this step must not be taken (non-finite loss, gradient or buffer), or None. One host sync."""
    checks = [loss.detach().float().reshape(1),
              torch.stack(torch._foreach_norm([p.grad for p in params])).sum().reshape(1)]
    if buffers:
        checks.append(torch.stack(torch._foreach_norm(buffers)).sum().reshape(1))
    finite = torch.isfinite(torch.cat(checks)).tolist()
    return _reason(finite)


def _reason(finite: list[bool]) -> str | None:
    if all(finite):
        return None
    return ("non-finite loss" if not finite[0] else "non-finite gradient" if not finite[1]
            else "non-finite BN statistics")


def _non_finite_on_any_rank(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor],
                            buffers: list[torch.Tensor]) -> tuple[str | None, torch.Tensor, torch.Tensor]:
    """`_non_finite` agreed over the ranks (one rank's bad loss or BN buffer stops every rank), and the
    global batch's mean loss and accuracy, in one small all_reduce (ranks hold equal row counts)."""
    checks = [loss.detach().double().reshape(1),
              torch.stack(torch._foreach_norm([p.grad for p in params])).sum().double().reshape(1)]
    if buffers:
        checks.append(torch.stack(torch._foreach_norm(buffers)).sum().double().reshape(1))
    bad = (~torch.isfinite(torch.cat(checks))).double()
    acc = (logits.detach().argmax(1) == y).double().mean().reshape(1)
    total = distributed.all_reduce_sum(torch.cat([bad, loss.detach().double().reshape(1), acc]))
    world = distributed.world_size()
    finite = (total[:len(bad)] == 0).tolist()
    return _reason(finite), (total[-2] / world).float(), (total[-1] / world).float()
