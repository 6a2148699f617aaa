"""Where a read of the raw view lies in the image files, so libfuse can copy it straight from there.

A read is cut into the runs ``extents()`` reports (a block, a run of present sectors, a run the
parent holds, a zero run), each placed in its file as ``vhdtool map`` places it; libfuse then
reads those file ranges itself and the bytes never pass through Python (less server CPU per
byte and faster --raw reads: bench/bench_mount.py). A read that
would need more than ``MAX_PIECES`` pieces (a bitmap of scattered sectors) is read through the
BlockDevice instead.
"""

from __future__ import annotations

from vhdtool.format.blockdev import BlockDevice, NotPlaceable, Placement

MAX_PIECES = 16


def locate(dev: BlockDevice, offset: int, length: int) -> list[Placement] | None:
    """The runs making up ``length`` bytes at ``offset`` of ``dev``, placed in their files; None
    when they cannot be placed (not file-backed, or too scattered)."""
    if not dev.can_place or length == 0:
        return None
    pieces: list[Placement] = []
    try:
        for placed in dev.place(offset, length):
            if len(pieces) == MAX_PIECES:
                return None
            pieces.append(placed)
    except NotPlaceable:
        return None
    return pieces
