"""Copying a source disk piece by piece, straight from the file that holds each piece.

For the images vhdtool opens itself (any VHD chain, a raw file) every data run is located in one
file of the chain (``map.map_device``), and the holes of that file inside the run (a block qemu
allocated whole but wrote 4 KiB of) are left out, found with SEEK_DATA/SEEK_HOLE. Each piece is
read whole with one ``os.preadv`` into a buffer its thread reuses for every piece (a fresh
buffer per piece costs the zeroing of its pages), checked for zeros in that buffer (one memcmp
that stops at the first non-zero byte, so data costs nothing to check) and, unless it is all
zeros, written out with ``os.pwrite`` from the same buffer, into blocks allocated for it just
before (``format.fallocate.allocate``). A kernel copy by ``os.copy_file_range`` would move the bytes once
instead of twice, yet for a source in the page cache it is the slower of the two: it goes
through splice's pipe, page by page. Any other BlockDevice (a
partition view, an overlay) is read through its ``pread``.

The source is read with pread, not through a memory map: a source cut short by another process
during the copy would kill a reader of a map with SIGBUS (its temporary output left behind).
Reads find the file short instead, and the copy stops with ``SourceChangedError``: the output
would be neither the old disk nor the new one.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

from vhdtool.errors import SourceChangedError, io_error
from vhdtool.format.blockdev import BlockDevice, Extent, Placement, file_extents
from vhdtool.format.fallocate import allocate
from vhdtool.ops.datapath import CHUNK, data_runs, is_zero, pieces, write_out
from vhdtool.ops.map import map_device


class Scanned(NamedTuple):
    piece: Placement
    """Where the piece is: ``fd`` -1 when it is read through the device."""
    zero: bool
    data: bytes | None = None
    """The bytes, when they had to be read to be checked (a piece not located in a file)."""


class SourceReader:
    """The data pieces of ``dev`` (none crossing a multiple of ``grid``), read and written out.

    ``read`` and ``write`` may run on several threads at once: each thread reads the pieces
    located in a file into a buffer of its own, where a piece stays until the same thread reads
    the next one. So a piece is written by the thread that read it, before it reads another.
    """

    def __init__(self, dev: BlockDevice, grid: int = CHUNK, *, write_behind: bool = True) -> None:
        self.dev = dev
        self.grid = grid
        self.write_behind = write_behind
        """Start the writeback of each piece as it is written (for an output that is fsynced)."""
        self._files: dict[int, tuple[str, int]] = {}
        """fd -> (path, size when the copy began): a piece past that size is read the device's way."""
        self._local = threading.local()
        self._allocate = True
        """Allocate each piece's blocks in the output before writing it, until the output's
        filesystem says it cannot."""
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

    def read(self, piece: Placement) -> Scanned:
        """Read the piece (into this thread's buffer when it is located in a file) and check it
        for zeros."""
        if piece.fd < 0 or piece.file_offset + piece.length > self._files[piece.fd][1]:
            data = self.dev.pread(piece.offset, piece.length)
            return Scanned(piece, is_zero(data), data)
        buffer = self._buffer()
        filled = memoryview(buffer)[: piece.length]  # the buffer is longer than a short piece
        self._read_into(piece, filled)
        return Scanned(piece, is_zero(filled))

    def data(self, scanned: Scanned) -> bytes | memoryview:
        """The bytes of the piece this thread read last."""
        if scanned.data is not None:
            return scanned.data
        return memoryview(self._buffer())[: scanned.piece.length]

    def write(self, scanned: Scanned, fd: int, offset: int) -> None:
        """Write the piece this thread read last at ``offset`` of the output file ``fd`` (and
        start its writeback when ``write_behind``)."""
        data = self.data(scanned)
        if self._allocate and not allocate(fd, offset, len(data)):
            self._allocate = False
        write_out(fd, offset, data, self.write_behind)

    def _buffer(self) -> bytearray:
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(self.grid)
        return buffer

    def _read_into(self, piece: Placement, view: memoryview) -> None:
        """Fill ``view`` with the piece, from the file that holds it."""
        done = 0
        while done < len(view):
            try:
                n = os.preadv(piece.fd, [view[done:]], piece.file_offset + done)
            except OSError as e:
                raise io_error(self._files[piece.fd][0], "read", e) from None
            if n == 0:
                self._changed(piece, done)
            done += n

    def _changed(self, piece: Placement, at: int) -> None:
        """The file ends before data it held when the copy began: some other process cut it."""
        path, size = self._files[piece.fd]
        now = os.fstat(piece.fd).st_size
        raise SourceChangedError(
            f"{path}: changed during the copy: the file shrank from {size} to {now} bytes"
            f" (data at offset {piece.file_offset + at} is gone); the output is not kept"
        )
