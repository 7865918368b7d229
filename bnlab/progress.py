"""Minimal progress reporting for long work (training epochs, Lanczos iterations).

A dependency-free stand-in for tqdm: on a TTY it redraws one line, elsewhere (CI,
log files) it prints at most one line every `min_interval` seconds plus a final one.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int | None, desc: str = "", *, quiet: bool = False,
                 stream: TextIO | None = None, min_interval: float = 0.5) -> None:
        self.total = total
        self.desc = desc
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval if self.tty else max(min_interval, 10.0)
        self.n = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self._last >= self.min_interval:
            self._last = now
            self._draw(final=False)

    def close(self, postfix: str | None = None) -> None:
        if postfix is not None:
            self.postfix = postfix
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        line = f"{self.desc} {count} [{elapsed:.1f}s] {self.postfix}".strip()
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\033[K" + line + end)
        elif final or self.n:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
