"""Ctrl-C and SIGTERM for long commands: stop promptly, with the state recorded.

Python runs a signal handler only when the main thread is back in the interpreter; a backward
pass of the full net on a CPU is one C++ call of tens of seconds, so a plain Ctrl-C waited that
long. Inside `signals_interrupt`, SIGINT and SIGTERM raise `Interrupt` in the main thread (the
ordinary, clean path); and the signal also wakes a watcher thread (torch releases the GIL in its
kernels) which, if the main thread has not taken the signal within `grace` seconds or a second
signal comes, calls `on_stuck(interrupt)`: that records what is needed and ends the process.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 2.0


class Interrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM, as an exception of the main thread."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        super().__init__(self.signal_name)


@contextmanager
def signals_interrupt(on_stuck: Callable[[Interrupt], None], grace: float = GRACE_SECONDS) -> Iterator[None]:
    """SIGINT/SIGTERM raise `Interrupt` in the main thread for the block; see the module docs.

    `on_stuck` runs on the watcher thread and must end the process (os._exit). Outside the main
    thread (where handlers cannot be set) the block runs with the signals as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = threading.Event()  # the main thread took the first signal
    count = [0]

    def handler(signum: int, frame: object) -> None:
        if taken.is_set():
            return  # a second signal while the first one is being handled: the watcher forces the exit
        taken.set()
        raise Interrupt(signum)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        while True:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                return
            if not data:  # the block ended: pipe closed
                return
            count[0] += 1
            if count[0] > 1 or not taken.wait(grace):
                on_stuck(Interrupt(data[0]))
                return

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="bnlab-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in previous.items():
            signal.signal(s, h)
        os.close(write_fd)  # wakes the watcher, which returns
        watcher.join(timeout=1.0)
        os.close(read_fd)
