"""Allocating the blocks of a piece of a new output file before the piece is written.

A buffered write into a hole makes ext4 (and XFS) reserve a delayed allocation for every page;
into blocks allocated beforehand (unwritten extents, which read as zeros) it only fills pages,
and one fallocate for the whole piece costs less than those reservations. Only pieces about to
be written are allocated, so the holes of the output stay holes.

This calls Linux's fallocate(2) itself: Python has only posix_fallocate, and glibc's version of
that, on a filesystem without fallocate (vfat, most FUSE filesystems, NFSv3), falls back to
writing a byte into every block, a second write of the whole output. Here such a filesystem
answers EOPNOTSUPP and the copy goes on without allocating.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from functools import cache

_CANNOT = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV}
"""What a filesystem (or a kernel, or a file that is no regular file) answers when it cannot
allocate: nothing is wrong with the output, it is written without."""


@cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate64 (64-bit offsets on every ABI), or None where there is none."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate64
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return call


def allocate(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes at ``offset`` of the file ``fd`` (its size grows to cover them).
    False when the filesystem cannot (nothing was done); a real failure (no space left, an I/O
    error) raises OSError, as the write would have."""
    call = _fallocate()
    if call is None:
        return False
    if call(fd, 0, offset, length) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in _CANNOT:
        return False
    raise OSError(code, os.strerror(code))
