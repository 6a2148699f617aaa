"""Run one blocking call per guest at once, and stop waiting at a deadline.

Plain daemon threads rather than a ThreadPoolExecutor: a call that never returns (an agent stuck
in a freeze) must not keep the process alive at exit, and concurrent.futures joins its workers
at interpreter exit. A call abandoned at its deadline keeps running in its thread; the caller
decides what to do about the guest (thaw it, hand it to the watchdog).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")


@dataclass(slots=True)
class Outcome(Generic[T]):
    """What one call did: finished with ``value``, raised ``error``, or was still running."""

    done: bool = False
    value: T | None = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.done and self.error is None


class Batch(Generic[K, T]):
    """One call per key, started together; ``wait(deadline)`` returns when all have finished,
    when one failed (if ``stop_on_error``), or at the deadline, whichever comes first."""

    def __init__(self, keys: Iterable[K], fn: Callable[[K], T]) -> None:
        self.outcomes: dict[K, Outcome[T]] = {k: Outcome() for k in keys}
        self._fn = fn
        self._cond = threading.Condition()
        self._pending = len(self.outcomes)
        self._failed = False

    def start(self) -> Batch[K, T]:
        for key in self.outcomes:
            threading.Thread(target=self._call, args=(key,), daemon=True, name=f"vss-{key}").start()
        return self

    def _call(self, key: K) -> None:
        outcome = self.outcomes[key]
        outcome.started = time.monotonic()
        try:
            outcome.value = self._fn(key)
        except BaseException as e:  # every failure is data for the coordinator, never lost
            outcome.error = e
        outcome.finished = time.monotonic()
        with self._cond:
            outcome.done = True
            self._pending -= 1
            self._failed = self._failed or outcome.error is not None
            self._cond.notify_all()

    def wait(self, deadline: float, stop_on_error: bool = False) -> bool:
        """True when every call finished by the deadline (successfully or not)."""
        with self._cond:
            while self._pending and not (stop_on_error and self._failed):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._pending == 0

    def failures(self) -> dict[K, BaseException]:
        return {k: o.error for k, o in self.outcomes.items() if o.done and o.error is not None}

    def unfinished(self) -> list[K]:
        return [k for k, o in self.outcomes.items() if not o.done]

    def last_finish(self) -> float:
        return max((o.finished for o in self.outcomes.values() if o.done), default=time.monotonic())


def run_all(keys: Iterable[K], fn: Callable[[K], T], timeout: float) -> Batch[K, T]:
    """Start ``fn`` for every key and wait up to ``timeout`` seconds for all of them."""
    batch = Batch(keys, fn).start()
    batch.wait(time.monotonic() + timeout)
    return batch
