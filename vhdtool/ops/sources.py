"""Reading a source disk piece by piece, straight from the file that holds each piece.

For the images vhdtool opens itself (any VHD chain, a raw file) every data run is located in one
file of the chain (``map.map_device``): a piece is then read with one ``os.preadv`` into a buffer
that is reused, rather than through ``pread``, which allocates (and page-faults) a fresh buffer
per call. Any other BlockDevice (a partition view, an overlay) is read through its ``pread``.
Measured on 512 MiB: the reads' page faults were ~8% of a conversion's CPU time.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass

from vhdtool.format.blockdev import BlockDevice, Extent, RawFile
from vhdtool.format.fixed import FixedImage
from vhdtool.format.image import ImageBase
from vhdtool.format.sparse import SparseImage
from vhdtool.ops.datapath import CHUNK, WINDOW, WORKERS, data_runs, pieces
from vhdtool.ops.map import map_device


@dataclass(frozen=True, slots=True)
class Piece:
    offset: int
    """Offset on the virtual disk."""
    length: int
    fd: int | None
    """The file holding the whole piece, None to read through the device."""
    host: int
    """Offset of the piece in that file."""


_LOCATABLE = (SparseImage, FixedImage, RawFile)


class SourceReader:
    """The data pieces of ``dev`` (never crossing a multiple of ``grid``) and a way to read them.

    ``read`` returns a buffer that stays valid until ``release`` is called with it.
    """

    def __init__(self, dev: BlockDevice, grid: int = CHUNK) -> None:
        self.dev = dev
        self.grid = grid
        self._buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(WINDOW + WORKERS + 1):
            self._buffers.put(bytearray(grid))
        self.pieces = self._pieces()

    def _pieces(self) -> list[Piece]:
        dev, grid = self.dev, self.grid
        layers = list(dev.chain()) if isinstance(dev, ImageBase) else [dev]
        if not all(isinstance(layer, _LOCATABLE) for layer in layers):
            return [Piece(o, n, None, o) for o, n in pieces(data_runs(dev), grid)]
        out = []
        for entry in map_device(dev):
            if entry.zero:
                continue
            assert entry.offset is not None
            fd = layers[entry.depth].fileno()
            for offset, length in pieces([Extent(entry.start, entry.length, False)], grid):
                out.append(Piece(offset, length, fd, entry.offset + offset - entry.start))
        return out

    def read(self, piece: Piece) -> bytes | bytearray:
        if piece.fd is None or piece.length != self.grid:
            return self.dev.pread(piece.offset, piece.length)
        buf = self._buffers.get()
        if os.preadv(piece.fd, [buf], piece.host) != piece.length:  # a short file: let the device decide
            self._buffers.put(buf)
            return self.dev.pread(piece.offset, piece.length)
        return buf

    def release(self, data: bytes | bytearray) -> None:
        if isinstance(data, bytearray) and len(data) == self.grid:
            self._buffers.put(data)
