"""libfuse buffer vectors for ``read_buf``: malloc'ed as libfuse expects, since it frees them.

libfuse (fuse.c, fuse_free_buf) frees the vector and every memory buffer in it with free() once
the reply is sent; a file buffer (FUSE_BUF_IS_FD) is read by libfuse itself, which never closes
the descriptor. mfusepy declares ``struct fuse_bufvec`` with a pointer where C has an inline
array, so the layout is declared here; libfuse 3.17 added ``mem_size`` to ``struct fuse_buf``.

With FUSE_CAP_SPLICE_WRITE, libfuse answers a vector of file buffers by splicing the image
file's cached pages into a pipe and the pipe into /dev/fuse: one copy (into the reader's pages)
instead of pread into a fresh buffer and a write from it. libfuse only splices a reply that
fits its per-thread pipe with room to spare (``SPLICE_SPARE``), and a pipe grows past
/proc/sys/fs/pipe-max-size (1 MiB by default) only with CAP_SYS_RESOURCE, which a container's
root may lack; ``read_request`` then asks the kernel for reads small enough to fit (a 1 MiB read
is then two requests, slower than one but still well ahead of copying; bench/bench_mount.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import functools
import mmap
import os
from typing import Any

from vhdtool.format.blockdev import Placement
from vhdtool.mount import fusebind

fuse = fusebind.load()

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
SPLICE_SPARE = 5 * mmap.PAGESIZE
"""What libfuse (fuse_send_data_iov) wants in its pipe beyond a reply's bytes: a page per iovec
and per buffer, plus one; 5 pages leave room for the header and a reply of two pieces (a read
across a block boundary)."""

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


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]


@functools.cache
def _vector_type(count: int) -> type[ctypes.Structure]:
    """``struct fuse_bufvec`` with room for ``count`` buffers (C: a flexible ``buf[1]`` array)."""
    return type(
        f"FuseBufVec{count}",
        (ctypes.Structure,),
        {"_fields_": [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                      ("buf", FuseBuf * count)]},
    )


def _alloc(size: int, zeroed: bool) -> int:
    address = _libc.calloc(1, max(size, 1)) if zeroed else _libc.malloc(max(size, 1))
    if not address:
        raise MemoryError(f"cannot allocate {size} bytes for a FUSE reply")
    return int(address)


def from_pieces(pieces: list[Placement]) -> ctypes.Structure:
    """A vector reading each piece from its file, or zeros; libfuse does the copying."""
    kind = _vector_type(len(pieces))
    vec = kind.from_address(_alloc(ctypes.sizeof(kind), zeroed=True))
    vec.count = len(pieces)
    for buf, piece in zip(vec.buf, pieces, strict=True):
        buf.size = piece.length
        if piece.zero:
            buf.mem = _alloc(piece.length, zeroed=True)
        else:
            buf.flags, buf.fd, buf.pos = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, piece.fd, piece.file_offset
    return vec


def from_bytes(data: bytes) -> ctypes.Structure:
    kind = _vector_type(1)
    vec = kind.from_address(_alloc(ctypes.sizeof(kind), zeroed=True))
    vec.count = 1
    vec.buf[0].size = len(data)
    vec.buf[0].mem = _alloc(len(data), zeroed=False)
    ctypes.memmove(vec.buf[0].mem, data, len(data))
    return vec


def read_request(largest: int) -> int:
    """The read request size to mount with: ``largest`` when libfuse can splice replies that
    big here, else the largest that still fits a pipe of /proc/sys/fs/pipe-max-size."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, largest + SPLICE_SPARE)
        return largest
    except OSError:
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                pipe_max = int(f.read())
        except (OSError, ValueError):
            return largest
        # below half the largest request, two requests per read cost more than the copy saves
        fitting = (pipe_max - SPLICE_SPARE) // mmap.PAGESIZE * mmap.PAGESIZE
        return fitting if fitting >= largest // 2 else largest
    finally:
        os.close(r)
        os.close(w)


def hand_over(bufpp: Any, vec: ctypes.Structure) -> None:
    """Give ``vec`` to libfuse through read_buf's ``struct fuse_bufvec **bufp``."""
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.addressof(vec)
