"""Runs of allocated and unallocated BAT entries, found in bulk.

Whatever walks a sparse image (extents, map, convert, compare, check, compact, merge, the NBD
server's block status, the mount's placement) must cost in proportion to the blocks that are
allocated, not to the virtual size: a 2040 GiB disk has 1,044,480 entries of 2 MiB blocks. A run
of unallocated entries (all ones, the same in either byte order) is skipped by comparing slices
of the table with ones (one memcmp each; 256 bytes first, doubling up to 64 KiB) and, where a
run ends, by stripping the ones of that slice; a run of allocated entries ends at the next
all-ones entry, found by ``array.index``. No Python code runs per unallocated entry.

``bat`` is the table as an ``array('I')`` (any byte order: only the all-ones value matters).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from vhdtool.format.structs import UNALLOCATED

_STEP = 16384
"""Entries compared with all ones at a time, at most."""
_FIRST_STEP = 64
_ONES = b"\xff" * (4 * _STEP)


def _unallocated_end(bat: array, first: int, last: int) -> int:
    """The index of the first allocated entry in [first, last), or ``last`` if there is none."""
    i = first
    step = _FIRST_STEP  # short gaps between allocated blocks are common: start small, then double
    # the views are released before returning: a live one would stop the table from growing
    with memoryview(bat) as view, view.cast("B") as raw:
        while i < last:
            n = min(step, last - i)
            chunk = raw[4 * i : 4 * (i + n)]
            if _ONES.startswith(chunk):  # one memcmp against the table itself, no copy
                i += n
                step = min(2 * step, _STEP)
                continue
            # the first byte that is not 0xFF lies in the first allocated entry
            return i + (4 * n - len(chunk.tobytes().lstrip(b"\xff"))) // 4
    return last


def _allocated_end(bat: array, first: int, last: int) -> int:
    """The index of the first unallocated entry in [first, last), or ``last`` if there is none."""
    try:
        return bat.index(UNALLOCATED, first, last)
    except ValueError:
        return last


def bat_runs(bat: array, first: int = 0, last: int | None = None) -> Iterator[tuple[bool, int, int]]:
    """(allocated, start, stop) for the runs of entries [first, last) of ``bat``, in order."""
    last = len(bat) if last is None else min(last, len(bat))
    i = first
    while i < last:
        if bat[i] == UNALLOCATED:
            stop = _unallocated_end(bat, i, last)
            yield False, i, stop
        else:
            stop = _allocated_end(bat, i, last)
            yield True, i, stop
        i = stop


def allocated_runs(bat: array, first: int = 0, last: int | None = None) -> Iterator[tuple[int, int]]:
    """(start, stop) of the runs of allocated entries in [first, last)."""
    for allocated, start, stop in bat_runs(bat, first, last):
        if allocated:
            yield start, stop


def allocated_indexes(bat: array, first: int = 0, last: int | None = None) -> Iterator[int]:
    """The indexes of the allocated entries in [first, last), in order."""
    for start, stop in allocated_runs(bat, first, last):
        yield from range(start, stop)


def count_allocated(bat: array) -> int:
    """How many entries of ``bat`` are allocated."""
    return sum(stop - start for start, stop in allocated_runs(bat))
