"""Copying a source disk piece by piece, straight from the file that holds each piece.

For the images vhdtool opens itself (any VHD chain, a raw file) every data run is located in one
file of the chain (``map.map_device``), and the holes of that file inside the run (a block qemu
allocated whole but wrote 4 KiB of) are left out, found with SEEK_DATA/SEEK_HOLE. Such a piece is
checked for zeros by reading its first 4 KiB into a buffer the thread reuses (data seldom starts
with a zero page, so most pieces are known to hold data after that one small read); only a piece
that starts with zeros is read on, 256 KiB at a time, until a non-zero byte turns up. It is then
copied with ``os.copy_file_range``: the kernel moves the bytes once, where a read and a write copy
them twice. Any other BlockDevice (a partition view, an overlay) is read through its ``pread`` and
written with ``os.pwrite``.

The zero checks read the source with pread, not through a memory map: a source cut short by
another process during the copy would kill a reader of a map with SIGBUS (its temporary output
left behind). Reads find the file short instead, and the copy stops with ``SourceChangedError``:
the output would be neither the old disk nor the new one. A source of written zeros must be read
in full either way.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import NamedTuple

from vhdtool.errors import SourceChangedError, io_error
from vhdtool.format.blockdev import BlockDevice, Extent, Placement, file_extents
from vhdtool.ops.datapath import CHUNK, data_runs, is_zero, pieces, write_out
from vhdtool.ops.map import map_device

_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}
PROBE = 4096
"""Bytes of a piece read first to check it for zeros (one page)."""
SCAN = 256 << 10
"""Bytes read at a time to check the rest of a piece that starts with zeros."""


class Scanned(NamedTuple):
    piece: Placement
    """Where the piece is: ``fd`` -1 when it is read through the device."""
    zero: bool
    data: bytes | None = None
    """The bytes, when they had to be read to be checked (a piece not located in a file)."""


class SourceReader:
    """The data pieces of ``dev`` (none crossing a multiple of ``grid``), checked and copied.

    ``scan`` and ``copy`` may run on several threads at once (each thread checks zeros in a
    buffer of its own, so a scan keeps no bytes the next one overwrites).
    """

    def __init__(self, dev: BlockDevice, grid: int = CHUNK, *, write_behind: bool = True) -> None:
        self.dev = dev
        self.grid = grid
        self.write_behind = write_behind
        """Start the writeback of each piece as it is written (for an output that is fsynced)."""
        self._files: dict[int, tuple[str, int]] = {}
        """fd -> (path, size when the copy began): a piece past that size is read the device's way."""
        self._local = threading.local()
        self._zeros = memoryview(bytes(SCAN))
        self._copy_file_range = hasattr(os, "copy_file_range")
        self.pieces = self._pieces()

    def _pieces(self) -> list[Placement]:
        dev, grid = self.dev, self.grid
        if not dev.can_place:
            return [Placement(o, n, 0, False, o) for o, n in pieces(data_runs(dev), grid)]
        out = []
        for run in map_device(dev):
            if run.zero:
                continue
            if run.fd not in self._files:
                self._files[run.fd] = (run.path or "", os.fstat(run.fd).st_size)
            shift = run.offset - run.file_offset  # virtual offset = file offset + shift
            # holes of the file inside the run read as zeros: nothing to read or write there
            held = [
                Extent(e.offset + shift, e.length, False)
                for e in file_extents(run.fd, run.file_offset, run.file_offset + run.length, run.path or "")
                if not e.zero
            ]
            for offset, length in pieces(held, grid):
                out.append(Placement(offset, length, run.depth, False, offset - shift, run.path, run.fd))
        return out

    def scan(self, piece: Placement) -> Scanned:
        """Is the piece all zeros? Its first page is read, and the rest only if that is zero."""
        if piece.fd < 0 or piece.file_offset + piece.length > self._files[piece.fd][1]:
            data = self.dev.pread(piece.offset, piece.length)
            return Scanned(piece, is_zero(data), data)
        # read a page, then a few hundred KiB at a time into a buffer that stays in the CPU cache,
        # until a non-zero byte turns up (bytearray.startswith is one memcmp, with no copy)
        buffer = self._buffer()
        view = memoryview(buffer)
        at, n = 0, min(PROBE, piece.length)
        while n:
            self._read_into(piece, view[:n], at)
            if not buffer.startswith(self._zeros[:n]):
                return Scanned(piece, False)
            at += n
            n = min(SCAN, piece.length - at)
        return Scanned(piece, True)

    def copy(self, scanned: Scanned, fd: int, offset: int) -> None:
        """Write the piece at ``offset`` of the output file ``fd`` (and start its writeback when
        ``write_behind``)."""
        piece = scanned.piece
        data = scanned.data
        if data is None and piece.fd >= 0:
            if self._copy_file_range:
                try:
                    self._copy_range(piece, fd, offset)
                    if self.write_behind:
                        os.posix_fadvise(fd, offset, piece.length, os.POSIX_FADV_DONTNEED)  # see write_out
                    return
                except OSError as e:
                    if e.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    self._copy_file_range = False  # another filesystem, or an old kernel: copy by hand
            data = bytearray(piece.length)
            self._read_into(piece, memoryview(data), 0)
        if data is None:
            data = self.dev.pread(piece.offset, piece.length)
        write_out(fd, offset, data, self.write_behind)

    def _buffer(self) -> bytearray:
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(SCAN)
        return buffer

    def _read_into(self, piece: Placement, view: memoryview, at: int) -> None:
        """Fill ``view`` from ``at`` bytes into the piece, in the file that holds it."""
        done = 0
        while done < len(view):
            try:
                n = os.preadv(piece.fd, [view[done:]], piece.file_offset + at + done)
            except OSError as e:
                raise io_error(self._files[piece.fd][0], "read", e) from None
            if n == 0:
                self._changed(piece, at + done)
            done += n

    def _copy_range(self, piece: Placement, dst: int, dst_offset: int) -> None:
        done = 0
        while done < piece.length:
            try:
                n = os.copy_file_range(piece.fd, dst, piece.length - done, piece.file_offset + done, dst_offset + done)
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    self._blame_source(piece, done, e)
                raise
            if n == 0:
                self._changed(piece, done)
            done += n

    def _blame_source(self, piece: Placement, at: int, error: OSError) -> None:
        """copy_file_range's error does not say which file failed: when the rest of the piece
        cannot be read from the source, the error is the source's (else it names the output).
        Only reached on an error, so reading the rest again costs nothing in a good copy."""
        for offset in range(piece.file_offset + at, piece.file_offset + piece.length, CHUNK):
            try:
                os.pread(piece.fd, min(CHUNK, piece.file_offset + piece.length - offset), offset)
            except OSError as e:
                raise io_error(self._files[piece.fd][0], "read", e) from error

    def _changed(self, piece: Placement, at: int) -> None:
        """The file ends before data it held when the copy began: some other process cut it."""
        path, size = self._files[piece.fd]
        now = os.fstat(piece.fd).st_size
        raise SourceChangedError(
            f"{path}: changed during the copy: the file shrank from {size} to {now} bytes"
            f" (data at offset {piece.file_offset + at} is gone); the output is not kept"
        )
