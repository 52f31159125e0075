"""Ctrl-C while tuning: the first stops after the batch being measured, the second aborts.

A SIGINT handler alone lost Ctrl-C: inside MetaSchedule's search, TVM installs a SIGINT handler
of its own again and again, and a Ctrl-C that came while it was in place was dropped (the tuning
ran to its end). So SIGINT is blocked, and a watcher thread takes it with sigwait, which no
installed handler can intercept. A blocked signal goes to any thread that does not block it,
and threads inherit the mask of the thread that starts them: the CLI calls :func:`hold_ctrl_c`
before numpy, PyTorch or TVM start any thread (this module imports none of them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_ACTIVE: list[Stop] = []  # the Stop of the tuning that owns Ctrl-C in this process


class Stop:
    """A Ctrl-C or a time budget asks the tuner to stop after the batch being measured."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.reason: str | None = None

    def check(self) -> str | None:
        if self.reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = "time budget"
        return self.reason


def hold_ctrl_c() -> None:
    """Block SIGINT in this thread, and so in every thread it starts from now on."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def release_ctrl_c() -> None:
    """Undo :func:`hold_ctrl_c`: a Ctrl-C reaches this thread (the main one) again."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def ctrl_c_stops_tuning(log: Callable[[str], None]) -> Iterator[Stop]:
    """Within the block, Ctrl-C sets the yielded Stop's reason; a second one exits (130).

    Nested uses share the outer one's Stop. Outside the main thread it only yields a Stop.
    The handler installed beside the watcher serves threads started before SIGINT was held.
    """
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    stop = Stop(None)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupted(*_args):
        if stop.reason == "interrupted":
            # Raising would unwind through MetaSchedule's C++ loop (it crashed); the records
            # are already on disk, one append per measured batch.
            log("aborted")
            os._exit(130)
        stop.reason = "interrupted"
        log("interrupted: stopping after the current batch (Ctrl-C again to abort); "
            "records measured so far are saved")

    done = threading.Event()

    def watch():
        while not done.is_set():
            if signal.sigtimedwait({signal.SIGINT}, 0.1) is not None:
                interrupted()

    previous = signal.signal(signal.SIGINT, interrupted)
    hold_ctrl_c()
    watcher = threading.Thread(target=watch, name="deploytool-ctrl-c", daemon=True)
    watcher.start()
    _ACTIVE.append(stop)
    try:
        yield stop
    finally:
        _ACTIVE.pop()
        done.set()
        watcher.join()
        release_ctrl_c()
        signal.signal(signal.SIGINT, previous)
