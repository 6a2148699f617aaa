"""Holding Ctrl-C (and SIGTERM) back while a short sequence of in-place writes runs.

An operation that edits an image in place orders its writes so that the image is readable after
each one; a few steps still belong together (write a footer and cut the file, move a block and
point the BAT at it). Inside ``deferred_interrupts()`` the signals wait; they are delivered, as
KeyboardInterrupt or the default SIGTERM action, as soon as the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread anyway
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class StopRequest:
    """Set by Ctrl-C/SIGTERM inside ``graceful_stop()``; long loops poll it between safe points."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Turn Ctrl-C/SIGTERM into a request that a long in-place operation honours at its next safe
    point (it stops there, leaving a consistent image); KeyboardInterrupt is raised on the way out."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, _frame: object) -> None:
        stop.signum = signum

    old = {s: signal.signal(s, request) for s in _SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop():
        raise KeyboardInterrupt
