"""Where the bytes of a disk live in files: the one mapping `vhdtool map`, the NBD server's
spliced reads and the mount's file-backed reads share.

``extents()`` says which layer of a chain holds each run; the layer's layout says where
(``place_own``): a raw file or a fixed VHD holds disk offset X at file offset X, a dynamic or
differencing VHD holds it in its block's data area (BAT entry, then the sector bitmap). A
partition view places its runs as the disk below it does, shifted. Nothing here reads the files.
Block positions never move while an image is open (only offline commands rewrite a BAT), so a
placement stays valid while the device it came from is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vhdtool.format.blockdev import BlockDevice, Extent, NotPlaceable, Placement, file_extents, join_runs

__all__ = ["NotPlaceable", "Placement", "held_extents", "joined", "place"]


def place(dev: BlockDevice, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
    """The runs of [offset, offset + length) of ``dev``, each placed in its file, split where a
    sparse layer's blocks are not contiguous. Raises NotPlaceable for devices of other kinds."""
    return dev.place(offset, length)


def joined(runs: Iterable[Placement]) -> Iterator[Placement]:
    """Adjacent runs of the same kind joined: zero runs of the same layer, and data runs that
    follow each other both on the disk and in the same file (as qemu-img map joins them)."""
    return join_runs(runs, _joined)


def _joined(last: Placement, run: Placement) -> Placement | None:
    if last.end != run.offset or last.zero != run.zero or last.depth != run.depth or last.fd != run.fd:
        return None
    if not run.zero and last.file_offset + last.length != run.file_offset:
        return None
    return last._replace(length=last.length + run.length)


def held_extents(dev: BlockDevice, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
    """The data runs of [offset, offset + length) of ``dev`` less the holes of the files that hold
    them (a hole reads as zeros: a block qemu allocated whole and wrote 4 KiB of is mostly hole).
    Raises NotPlaceable for devices that are not file-backed."""
    for p in place(dev, offset, length):
        if p.zero:
            continue
        shift = p.offset - p.file_offset
        for e in file_extents(p.fd, p.file_offset, p.file_offset + p.length, p.path or ""):
            if not e.zero:
                yield Extent(e.offset + shift, e.length, False, p.depth, p.path)
