"""Where the bytes of a disk live in files: the one mapping `vhdtool map`, the NBD server's
spliced reads and the mount's file-backed reads share.

``extents()`` says which layer of a chain holds each run; the layer's layout says where: a raw
file or a fixed VHD holds disk offset X at file offset X, a dynamic or differencing VHD holds it
in its block's data area (BAT entry, then the sector bitmap). Nothing here reads the files.
Block positions never move while an image is open (only offline commands rewrite a BAT), so a
placement stays valid while the device it came from is open.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice, Extent, RawFile, file_extents
from vhdtool.format.fixed import FixedImage
from vhdtool.format.image import ImageBase
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import SECTOR, UNALLOCATED


@dataclass(frozen=True, slots=True)
class Placement:
    """``length`` bytes at disk ``offset``: in layer ``depth``'s file at ``file_offset``, or zeros."""

    offset: int
    length: int
    depth: int
    """The layer holding the run (0 = top); for zero runs, the bottom layer (as qemu-img map)."""
    zero: bool
    file_offset: int = 0
    path: str | None = None
    fd: int = -1
    """The layer's open file descriptor, -1 for zero runs."""

    @property
    def end(self) -> int:
        return self.offset + self.length


class NotPlaceable(Exception):
    """A layer of the device is not a file vhdtool can place bytes in (an overlay, a view)."""


def layers_of(dev: BlockDevice) -> list[BlockDevice]:
    """The chain of ``dev``, top first; a raw file is its own only layer."""
    if isinstance(dev, ImageBase):
        return list(dev.chain())
    if isinstance(dev, RawFile):
        return [dev]
    raise NotPlaceable(f"{dev.path}: not a file-backed disk")


def place(dev: BlockDevice, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
    """The runs of [offset, offset + length) of ``dev``, each placed in its file, split where a
    sparse layer's blocks are not contiguous. Raises NotPlaceable for devices of other kinds."""
    layers = layers_of(dev)
    bottom = len(layers) - 1
    for extent in dev.extents(offset, length):
        if extent.zero:
            yield Placement(extent.offset, extent.length, bottom, True)
            continue
        layer = layers[extent.depth] if extent.depth < len(layers) else None
        if isinstance(layer, (RawFile, FixedImage)):
            yield Placement(
                extent.offset, extent.length, extent.depth, False, extent.offset, layer.path, layer.fileno()
            )
        elif isinstance(layer, SparseImage):
            yield from _place_sparse(layer, extent.offset, extent.end, extent.depth)
        else:
            raise NotPlaceable(f"layer {extent.depth} of {dev.path} is not a file vhdtool can place bytes in")


def _place_sparse(layer: SparseImage, start: int, stop: int, depth: int) -> Iterator[Placement]:
    bitmap = rules.bitmap_bytes(layer.block_size)
    fd = layer.fileno()
    pos = start
    while pos < stop:
        block, in_block = divmod(pos, layer.block_size)
        n = min(stop - pos, layer.block_size - in_block)
        entry = layer.bat[block]
        if entry == UNALLOCATED:  # the extents said this layer holds it: never guess
            raise NotPlaceable(f"{layer.path}: block {block} is not allocated")
        yield Placement(pos, n, depth, False, entry * SECTOR + bitmap + in_block, layer.path, fd)
        pos += n


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
