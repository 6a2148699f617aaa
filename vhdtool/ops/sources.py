"""Copying a source disk piece by piece, straight from the file that holds each piece.

For the images vhdtool opens itself (any VHD chain, a raw file) every data run is located in one
file of the chain (``map.map_device``). Such a piece is checked for zeros in place, through a
read-only memory map of that file (no copy), and copied with ``os.copy_file_range``: the kernel
moves the bytes once, where a read and a write copy them twice. Any other BlockDevice (a
partition view, an overlay) is read through its ``pread`` and written with ``os.pwrite``.
Measured on 512 MiB of data: 0.24 s of CPU against 0.34 s for read + write.

Memory maps turn a source file truncated under a running copy into SIGBUS instead of an error;
sources are opened read-only and nothing in vhdtool shrinks an image that is open.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from dataclasses import dataclass
from functools import cache

from vhdtool.format.blockdev import BlockDevice, Extent, RawFile
from vhdtool.format.fixed import FixedImage
from vhdtool.format.image import ImageBase
from vhdtool.format.rewrite import pwrite_all
from vhdtool.format.sparse import SparseImage
from vhdtool.ops.datapath import CHUNK, data_runs, is_zero, pieces, write_out
from vhdtool.ops.map import map_device

_LOCATABLE = (SparseImage, FixedImage, RawFile)
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


@dataclass(frozen=True, slots=True)
class Piece:
    offset: int
    """Offset on the virtual disk."""
    length: int
    fd: int | None
    """The file holding the whole piece, None to read it through the device."""
    host: int
    """Offset of the piece in that file."""


@dataclass(frozen=True, slots=True)
class Scanned:
    piece: Piece
    zero: bool
    data: bytes | None = None
    """The bytes, when they had to be read to be checked (a piece not located in a file)."""


@cache
def _zeros(n: int) -> bytes:
    return bytes(n)


class SourceReader:
    """The data pieces of ``dev`` (none crossing a multiple of ``grid``), checked and copied.

    ``scan`` and ``copy`` may run on several threads at once; ``close`` unmaps the files.
    """

    def __init__(self, dev: BlockDevice, grid: int = CHUNK) -> None:
        self.dev = dev
        self.grid = grid
        self._maps: dict[int, mmap.mmap] = {}
        self._copy_file_range = hasattr(os, "copy_file_range")
        self.pieces = self._pieces()

    def _pieces(self) -> list[Piece]:
        dev, grid = self.dev, self.grid
        layers = list(dev.chain()) if isinstance(dev, ImageBase) else [dev]
        if not all(isinstance(layer, _LOCATABLE) for layer in layers):
            return [Piece(o, n, None, o) for o, n in pieces(data_runs(dev), grid)]
        for layer in layers:
            fd = layer.fileno()
            with contextlib.suppress(OSError, ValueError):  # empty, or not mappable: checked by reading
                self._maps[fd] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        out = []
        for entry in map_device(dev):
            if entry.zero:
                continue
            assert entry.offset is not None
            fd = layers[entry.depth].fileno()
            for offset, length in pieces([Extent(entry.start, entry.length, False)], grid):
                out.append(Piece(offset, length, fd, entry.offset + offset - entry.start))
        return out

    def scan(self, piece: Piece) -> Scanned:
        """Is the piece all zeros? Checked in the mapped file when it can be, else read."""
        mapped = self._maps.get(piece.fd) if piece.fd is not None else None
        if mapped is not None and piece.host + piece.length <= len(mapped):
            zeros = _zeros(piece.length)
            return Scanned(piece, mapped.find(zeros, piece.host, piece.host + piece.length) == piece.host)
        data = self.dev.pread(piece.offset, piece.length)
        return Scanned(piece, is_zero(data), data)

    def copy(self, scanned: Scanned, fd: int, offset: int) -> None:
        """Write the piece at ``offset`` of the output file ``fd`` (and start its writeback)."""
        piece = scanned.piece
        if scanned.data is None and piece.fd is not None and self._copy_file_range:
            try:
                _copy_range(piece.fd, piece.host, fd, offset, piece.length)
                os.posix_fadvise(fd, offset, piece.length, os.POSIX_FADV_DONTNEED)  # see write_out
                return
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                self._copy_file_range = False  # another filesystem, or an old kernel: copy by hand
        data = scanned.data if scanned.data is not None else self.dev.pread(piece.offset, piece.length)
        write_out(fd, offset, data)

    def close(self) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()


def _copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, length - done, src_offset + done, dst_offset + done)
        if n == 0:  # the source ends early: the rest reads as zeros, as the image would read it
            pwrite_all(dst, dst_offset + done, bytes(length - done))
            return
        done += n
