"""The shared data path of the copying operations: which runs hold data, split into large
pieces on a grid, zero detection without per-sector loops, and progress reporting."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from vhdtool.format.blockdev import BlockDevice, Extent, merge_extents

CHUNK = 4 << 20
"""Bytes read or written at a time: large enough that syscalls cost nothing, small enough for RAM."""
_ZERO = bytes(CHUNK)

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: bytes processed so far and in all; called after every piece."""


def is_zero(data: bytes | bytearray) -> bool:
    """True when every byte is zero (one memcmp, not a Python loop)."""
    n = len(data)
    return data == (_ZERO if n == CHUNK else bytes(n))


def data_runs(dev: BlockDevice, offset: int = 0, length: int | None = None) -> list[Extent]:
    """The runs of ``dev`` that some layer holds data for (zero runs left out), merged."""
    return [e for e in merge_extents(iter(dev.extents(offset, length))) if not e.zero]


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
