"""fallocate(2) modes Python's os module lacks: punching holes and inserting ranges.

Both are optional filesystem features; each function says False when the filesystem (or the
alignment, multiples of its block size) does not allow the operation, and nothing changed then.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_INSERT_RANGE = 0x20
HOLE_ALIGN = 4096
"""Holes are punched in whole pages: a smaller hole would only zero bytes, freeing nothing."""


@cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    # ctypes is loaded on first use: importing ctypes.util is a noticeable part of a command's start
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the whole pages inside [offset, offset + length): they read as zeros afterwards."""
    start = -(-offset // HOLE_ALIGN) * HOLE_ALIGN
    end = (offset + length) // HOLE_ALIGN * HOLE_ALIGN
    function = _fallocate()
    if function is None or end <= start:
        return False
    return function(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start) == 0


def insert_range(fd: int, offset: int, length: int) -> bool:
    """Shift everything from ``offset`` on by ``length`` bytes in one step, leaving a hole that
    reads as zeros (FALLOC_FL_INSERT_RANGE: ext4, XFS)."""
    function = _fallocate()
    return function is not None and function(fd, FALLOC_FL_INSERT_RANGE, offset, length) == 0
