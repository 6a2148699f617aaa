"""Where a read of the raw view lies in the image files, so libfuse can copy it straight from there.

A read is cut into the runs ``extents()`` reports (a block, a run of present sectors, a run the
parent holds, a zero run), each placed in its file as ``vhdtool map`` places it; libfuse then
reads those file ranges itself and the bytes never pass through Python (less server CPU per
byte and faster --raw reads: bench/bench_mount.py). A read that
would need more than ``MAX_PIECES`` pieces (a bitmap of scattered sectors) is read through the
BlockDevice instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhdtool.disk.view import PartitionView
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.image import ImageBase
from vhdtool.format.placement import NotPlaceable, place

MAX_PIECES = 16


@dataclass(frozen=True, slots=True)
class Piece:
    """``length`` bytes of a read: in file ``fd`` at ``offset``, or zeros when ``fd`` is None."""

    length: int
    fd: int | None
    offset: int = 0


def locate(dev: BlockDevice, offset: int, length: int) -> list[Piece] | None:
    """The pieces making up ``length`` bytes at ``offset`` of ``dev``; None when they cannot be
    placed (not a VHD, or too scattered)."""
    while isinstance(dev, PartitionView):
        offset += dev.offset
        dev = dev.dev
    if not isinstance(dev, ImageBase) or length == 0:
        return None
    pieces: list[Piece] = []
    try:
        for placed in place(dev, offset, length):
            if len(pieces) == MAX_PIECES:
                return None
            pieces.append(
                Piece(placed.length, None) if placed.zero else Piece(placed.length, placed.fd, placed.file_offset)
            )
    except NotPlaceable:
        return None
    return pieces
