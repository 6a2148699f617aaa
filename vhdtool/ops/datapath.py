"""The shared data path of the copying operations: which runs hold data, split into large
pieces on a grid, zero detection without per-sector loops, and progress reporting."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from vhdtool.format.blockdev import BlockDevice, Extent, merge_extents, zeros
from vhdtool.format.placement import NotPlaceable, held_extents
from vhdtool.format.rewrite import pwrite_all
from vhdtool.format.sparse import SparseImage

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
"""Threads copying pieces: os.pread/os.pwrite release the GIL, so reads, writes and the zero
checks of different pieces overlap (qemu-img keeps several requests in flight the same way).
Two, because writes into one output file take its inode lock in turn: while one thread writes,
one can read; a third mostly waits, and spinning on that lock takes a core from the others."""
WINDOW = 8
"""Pieces in flight at most (memory: WINDOW x CHUNK)."""

CHUNK = 4 << 20
"""Largest piece read (and copied) at a time: large enough that syscalls cost nothing, small enough for RAM."""

WRITE_STEP = 256 << 10
"""Most bytes of a piece written in one call. The length of a write sets the size of the page-cache
folios the kernel allocates for it: a 2 MiB write asks for 2 MiB folios, which come out of
whole free 2 MiB blocks of memory; in a virtual machine whose balloon reports free memory to the
host (free page reporting) those are the blocks the host has taken back, so every one costs a
fault in the host. Smaller folios come from memory the guest still holds. A folio also starts
at a multiple of its own size in the file, so a write that starts off such a multiple (the data
of a dynamic VHD's blocks starts a page past the last block) gets a run of small ones: writes
that end on multiples of WRITE_STEP leave the ones after them aligned."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: bytes processed so far and in all; called after every piece."""


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte is zero: one memcmp per CHUNK against the shared zero chunk (a prefix
    of it for a shorter piece, so no size needs a fresh buffer), not a Python loop per byte. A
    memoryview is compared the same way (``==`` would compare it item by item)."""
    view = memoryview(data).cast("B")
    chunk = zeros(CHUNK)
    return all(chunk.startswith(view[at : at + CHUNK]) for at in range(0, len(view), CHUNK))


def write_out(fd: int, offset: int, data: bytes | bytearray | memoryview, write_behind: bool = True) -> None:
    """Write to a new output file in calls that never cross a multiple of WRITE_STEP in the
    file, and, with ``write_behind``, start its writeback at once.

    An output that is fsynced before it is renamed into place gains from asking the kernel to
    write (and then drop) each piece as it goes: dirty pages do not pile up, so that fsync finds
    nothing left to do and the copy is not throttled by dirty-page limits
    (bench/bench_convert.py). An output that is not fsynced is better left to the page cache.
    """
    view = memoryview(data).cast("B")
    for at, n in pieces([Extent(offset, len(view), False)], WRITE_STEP):
        pwrite_all(fd, at, view[at - offset : at - offset + n])
    if write_behind:
        os.posix_fadvise(fd, offset, len(view), os.POSIX_FADV_DONTNEED)


def read_grid(dev: BlockDevice) -> int:
    """Piece size for reading ``dev``: its block size when it has blocks (a piece within one
    block is a single pread, with no assembly), else CHUNK."""
    return min([CHUNK, *(layer.block_size for layer in dev.layers() if isinstance(layer, SparseImage))])


def data_runs(dev: BlockDevice, offset: int = 0, length: int | None = None) -> list[Extent]:
    """The runs of ``dev`` that some layer holds data for (zero runs left out), merged."""
    return [e for e in merge_extents(iter(dev.extents(offset, length))) if not e.zero]


def held_runs(dev: BlockDevice, offset: int = 0, length: int | None = None) -> list[Extent]:
    """``data_runs`` less the holes of the files holding them, for file-backed devices (a hole reads
    as zeros, so nothing there needs reading); other devices get ``data_runs``."""
    try:
        return [e for e in merge_extents(held_extents(dev, offset, length)) if not e.zero]
    except NotPlaceable:
        return data_runs(dev, offset, length)


def union_runs(x: list[Extent], y: list[Extent]) -> list[Extent]:
    """Runs covered by either list, merged (each list sorted and non-overlapping)."""
    out: list[Extent] = []
    for run in sorted(x + y, key=lambda e: e.offset):
        if out and run.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, run.end) - last.offset, False)
        else:
            out.append(Extent(run.offset, run.length, False))
    return out


def pieces(runs: Iterable[Extent], grid: int = CHUNK) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of the runs that never cross a multiple of ``grid``."""
    for run in runs:
        pos, end = run.offset, run.end
        while pos < end:
            n = min(end, (pos // grid + 1) * grid) - pos
            yield pos, n
            pos += n


class Meter:
    """Counts bytes done and passes them to an optional progress callback."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.written = 0
        """Bytes actually written (the zero pieces among ``done`` are not)."""
        if callback is not None:
            callback(0, total)

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


class Cancelled(Exception):
    """The job never ran: its pool stopped first."""


class Job(Generic[R]):
    """One call run on a pool thread; ``result()`` waits for it and returns or raises what it did."""

    __slots__ = ("_call", "_done", "_error", "_result")

    def __init__(self, call: Callable[[], R]) -> None:
        self._call = call
        self._done = threading.Event()
        self._result: R | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._call()
        except BaseException as e:  # handed to the thread that asks for the result
            self._error = e
        finally:
            self._done.set()

    def cancel(self) -> None:
        self._error = Cancelled()
        self._done.set()

    def result(self) -> R:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class WorkerPool:
    """A few threads running jobs in the order they were submitted.

    concurrent.futures' pool would do the same, but importing it loads logging, several
    milliseconds of every copying command's start; this is the part the copies use."""

    def __init__(self, workers: int) -> None:
        import queue  # only the copies need it: map and compare import this module too

        self._jobs: queue.SimpleQueue[Job[object] | None] = queue.SimpleQueue()
        self._cancelling = False
        self._threads = [threading.Thread(target=self._work, name=f"vhdtool-copy-{n}") for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[T], R], item: T) -> Job[R]:
        job: Job[R] = Job(lambda: fn(item))
        self._jobs.put(job)  # type: ignore[arg-type]
        return job

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._cancelling:
                job.cancel()
            else:
                job.run()

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the threads once they have run (or, with ``cancel``, dropped) every queued job."""
        self._cancelling = cancel
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


@contextmanager
def worker_pool(workers: int = WORKERS) -> Iterator[WorkerPool]:
    """A thread pool that, however its block ends (Ctrl-C included), has stopped every worker
    before the caller goes on to close or remove the files they use."""
    pool = WorkerPool(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel=True)
        raise
    pool.shutdown()


def in_order(pool: WorkerPool, fn: Callable[[T], R], items: Iterable[T], window: int = WINDOW) -> Iterator[R]:
    """``fn`` over ``items`` on the pool, at most ``window`` in flight, results in item order."""
    pending: deque[Job[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Turns:
    """Lets steps running on several threads do one part each in a fixed order: ``turn(n)`` waits
    until the steps numbered below ``n`` have had theirs, and ends by letting step ``n + 1`` in.

    Steps must be started in their order (a pool's queue does that): the lowest step still waiting
    for its turn is then running, not queued behind the steps that wait for it.
    """

    def __init__(self) -> None:
        self._next = 0
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, number: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._next == number)
        try:
            yield
        finally:
            with self._changed:
                self._next = number + 1
                self._changed.notify_all()
