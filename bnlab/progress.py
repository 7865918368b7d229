"""Progress of long work (training epochs, HVPs, gradient batches, sweep points).

On a terminal: a tqdm bar with count, rate and ETA. Elsewhere (CI, log files, pipes): one line
per stage when it ends, so logs stay readable. Nothing at all with quiet=True (`-q`).

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
                 stream: TextIO | None = None, min_interval: float = 0.5) -> None:
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
        self._set_postfix(postfix)
        if self.bar is not None:
            self.bar.update(n)

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
        elapsed = time.perf_counter() - self.t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        self.stream.write(f"{self.desc}: {count} {self.unit} in {elapsed:.1f}s{rate}"
                          + (f" | {self.postfix}" if self.postfix else "") + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
