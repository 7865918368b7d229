"""Progress of long work (training epochs, HVPs, gradient batches, sweep points).

On a terminal: a tqdm bar with count, rate and ETA. Elsewhere (CI, log files, pipes): one line
per stage when it ends, so logs stay readable, and with `heartbeat=S` also a line at least every S
seconds within the stage (a CPU epoch of the full net takes most of an hour). Nothing at all with
quiet=True (`-q`). `RunEta` estimates the time left of work made of many stages (a training run).

A postfix may be a callable: it is evaluated only when the bar redraws, so a training loop can
show its loss without a device-to-host sync on every step.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

Postfix = str | Callable[[], str] | None


class Progress:
    def __init__(self, total: int | None, desc: str = "", *, quiet: bool = False, unit: str = "it",
                 stream: TextIO | None = None, min_interval: float = 0.5, heartbeat: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.n = 0
        self.t0 = time.perf_counter()
        self._last_postfix = -float("inf")
        self.postfix = ""
        self._closed = False
        self.heartbeat = heartbeat  # seconds between lines within the stage, when not on a terminal
        self._last_line = self.t0
        self.bar = (tqdm(total=total, desc=desc, unit=unit, file=self.stream, mininterval=min_interval,
                         dynamic_ncols=True, leave=True)
                    if self.tty and not quiet else None)

    def _set_postfix(self, postfix: Postfix, force: bool = False) -> None:
        if postfix is None:
            return
        now = time.perf_counter()
        if callable(postfix):
            if not force and now - self._last_postfix < self.min_interval:
                return
            postfix = postfix()
        self._last_postfix = now
        self.postfix = postfix
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)

    def update(self, n: int = 1, postfix: Postfix = None) -> None:
        self.n += n
        if self.total is not None and self.n > self.total:  # an estimated total was too low
            self.total = self.n
            if self.bar is not None:
                self.bar.total = self.n
        if self.bar is not None:
            self._set_postfix(postfix)
            self.bar.update(n)
        elif self.heartbeat is not None and not self.quiet and time.perf_counter() - self._last_line >= self.heartbeat:
            self._set_postfix(postfix, force=True)
            self._write_line(ongoing=True)
        else:
            self._set_postfix(postfix)

    def close(self, postfix: Postfix = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._set_postfix(postfix, force=True)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.refresh()
            self.bar.close()
            return
        self._write_line(ongoing=False)

    def _write_line(self, ongoing: bool) -> None:
        now = time.perf_counter()
        self._last_line = now
        elapsed = now - self.t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = ""
        if elapsed > 0 and self.n:
            per_s = self.n / elapsed
            rate = f", {per_s:.3g} {self.unit}/s" if per_s >= 1 else f", {1 / per_s:.3g} s/{self.unit}"
        left = ""
        if ongoing and self.total and self.n and self.n < self.total:
            left = f", {eta_text(elapsed / self.n * (self.total - self.n))} left"
        self.stream.write(f"{self.desc}: {count} {self.unit} in {elapsed:.1f}s{rate}{left}"
                          + (f" | {self.postfix}" if self.postfix else "") + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eta_text(seconds: float) -> str:
    """A remaining time rounded as people read an estimate: '40s', '12min', '3.5h', '19h'."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    hours = seconds / 3600
    return f"{hours:.1f}h" if hours < 10 else f"{hours:.0f}h"


class RunEta:
    """Time left of a run of `total` steps with a pause (evaluation) every `steps_per_stage` steps.

    Rates come from what this process timed (a resumed run times its own steps): mean seconds per step,
    mean seconds per evaluation once one was timed.
    """

    def __init__(self, total: int, done: int, steps_per_stage: int) -> None:
        self.total, self.done, self.steps_per_stage = total, done, steps_per_stage
        self.timed_steps, self.step_seconds = 0, 0.0
        self.timed_evals, self.eval_seconds = 0, 0.0

    def add_step(self, seconds: float) -> None:
        self.done += 1
        self.timed_steps += 1
        self.step_seconds += seconds

    def add_eval(self, seconds: float) -> None:
        self.timed_evals += 1
        self.eval_seconds += seconds

    @property
    def seconds_per_step(self) -> float | None:
        return self.step_seconds / self.timed_steps if self.timed_steps else None

    def remaining(self) -> float | None:
        """Seconds left (None before a step was timed)."""
        if not self.timed_steps:
            return None
        left = self.total - self.done
        evals_left = -(-left // self.steps_per_stage) if self.steps_per_stage else 0
        per_eval = self.eval_seconds / self.timed_evals if self.timed_evals else 0.0
        return left * self.step_seconds / self.timed_steps + evals_left * per_eval
