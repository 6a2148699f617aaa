"""fallocate(2), which Python's os module offers only as posix_fallocate: allocating blocks ahead
of writes, punching holes and inserting ranges.

All three are optional filesystem features. ``punch_hole`` and ``insert_range`` say False when
the filesystem (or the alignment, multiples of its block size) does not allow the operation, and
nothing changed then. ``allocate`` is for new output files: a buffered write into a hole makes
ext4 (and XFS) reserve a delayed allocation for every page; into blocks allocated beforehand
(unwritten extents, which read as zeros) it only fills pages, and one fallocate for a whole piece
costs less than those reservations. Python's posix_fallocate is no substitute: glibc's version, on
a filesystem without fallocate (vfat, most FUSE filesystems, NFSv3), falls back to writing a byte
into every block, a second write of the whole output; here such a filesystem answers EOPNOTSUPP
and the caller writes without allocating.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from functools import cache

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_INSERT_RANGE = 0x20
HOLE_ALIGN = 4096
"""Holes are punched in whole pages: a smaller hole would only zero bytes, freeing nothing."""

_CANNOT = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV}
"""What a filesystem (or a kernel, or a file that is no regular file) answers when it cannot
allocate: nothing is wrong with the output, it is written without."""


@cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate64 (64-bit offsets on every ABI), or None where there is none."""
    # ctypes is loaded on first use: importing it is a noticeable part of a command's start
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter itself uses
        function = libc.fallocate64
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def allocate(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes at ``offset`` of the file ``fd`` (its size grows to cover them).
    False when the filesystem cannot (nothing was done); a real failure (no space left, an I/O
    error) raises OSError, as the write would have."""
    function = _fallocate()
    if function is None:
        return False
    if function(fd, 0, offset, length) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in _CANNOT:
        return False
    raise OSError(code, os.strerror(code))


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
