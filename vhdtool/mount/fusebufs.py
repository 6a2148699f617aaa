"""libfuse buffer vectors for ``read_buf``: malloc'ed as libfuse expects, since it frees them.

libfuse (fuse.c, fuse_free_buf) frees the vector and every memory buffer in it with free() once
the reply is sent; a file buffer (FUSE_BUF_IS_FD) is read by libfuse itself, which never closes
the descriptor. mfusepy declares ``struct fuse_bufvec`` with a pointer where C has an inline
array, so the layout is declared here; libfuse 3.17 added ``mem_size`` to ``struct fuse_buf``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from vhdtool.mount import fusebind

fuse = fusebind.load()

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2

_buf_fields: list[tuple[str, Any]] = [
    ("size", ctypes.c_size_t),
    ("flags", ctypes.c_int),
    ("mem", ctypes.c_void_p),
    ("fd", ctypes.c_int),
    ("pos", ctypes.c_int64),
]
if (fuse.fuse_version_major, fuse.fuse_version_minor) >= (3, 17):
    _buf_fields.append(("mem_size", ctypes.c_size_t))


class FuseBuf(ctypes.Structure):
    _fields_ = _buf_fields


class FuseBufVec(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t), ("buf", FuseBuf)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]


def _vector(size: int, flags: int, mem: int | None, fd: int, pos: int) -> FuseBufVec:
    address = _libc.calloc(1, ctypes.sizeof(FuseBufVec))
    if not address:
        raise MemoryError("calloc failed for a FUSE buffer vector")
    vec = FuseBufVec.from_address(address)
    vec.count = 1
    vec.buf.size, vec.buf.flags, vec.buf.mem, vec.buf.fd, vec.buf.pos = size, flags, mem, fd, pos
    return vec


def from_file(size: int, fd: int, offset: int) -> FuseBufVec:
    """``size`` bytes of file ``fd`` at ``offset``, read by libfuse."""
    return _vector(size, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, None, fd, offset)


def zeros(size: int) -> FuseBufVec:
    mem = _libc.calloc(1, max(size, 1))
    if not mem:
        raise MemoryError("calloc failed for a FUSE reply")
    return _vector(size, 0, mem, -1, 0)


def from_bytes(data: bytes) -> FuseBufVec:
    mem = _libc.malloc(max(len(data), 1))
    if not mem:
        raise MemoryError("malloc failed for a FUSE reply")
    ctypes.memmove(mem, data, len(data))
    return _vector(len(data), 0, mem, -1, 0)


def hand_over(bufpp: Any, vec: FuseBufVec) -> None:
    """Give ``vec`` to libfuse through read_buf's ``struct fuse_bufvec **bufp``."""
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.addressof(vec)
