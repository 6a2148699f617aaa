"""`vhdtool map`: which runs of a disk hold data, in which file of the chain and where in it.

The JSON has the shape of `qemu-img map --output=json` (start, length, depth, present, zero,
data, offset), plus ``file``: the path of the image that holds a data run. Runs nobody holds read
as zeros and carry the depth of the bottom image, as qemu reports them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice, Extent
from vhdtool.format.image import ImageBase
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import SECTOR
from vhdtool.ops.devices import close_device, open_device


@dataclass(frozen=True, slots=True)
class MapEntry:
    start: int
    length: int
    depth: int
    zero: bool
    offset: int | None
    """Where the run's data starts in ``file`` (None for zero runs)."""
    file: str | None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start": self.start,
            "length": self.length,
            "depth": self.depth,
            "present": True,
            "zero": self.zero,
            "data": not self.zero,
        }
        if self.offset is not None:
            d["offset"] = self.offset
            d["file"] = self.file
        return d


def map_image(path: str | os.PathLike[str], fmt: str | None = None) -> list[MapEntry]:
    """The runs of ``path`` (a VHD with its chain, or a raw file) from offset 0 to its size."""
    dev = open_device(path, fmt)
    try:
        return list(map_device(dev))
    finally:
        close_device(dev)


def map_device(dev: BlockDevice) -> Iterator[MapEntry]:
    layers: list[BlockDevice] = list(dev.chain()) if isinstance(dev, ImageBase) else [dev]
    bottom = len(layers) - 1
    pending: MapEntry | None = None
    for extent in dev.extents():
        for entry in _located(extent, layers, bottom):
            if pending is not None and _joins(pending, entry):
                pending = dataclasses.replace(pending, length=pending.length + entry.length)
                continue
            if pending is not None:
                yield pending
            pending = entry
    if pending is not None:
        yield pending


def _joins(a: MapEntry, b: MapEntry) -> bool:
    if a.start + a.length != b.start or a.zero != b.zero or a.depth != b.depth or a.file != b.file:
        return False
    return a.offset is None or a.offset + a.length == b.offset


def _located(extent: Extent, layers: list[BlockDevice], bottom: int) -> Iterator[MapEntry]:
    """The extent with file offsets, split where the holding layer's blocks are not contiguous."""
    if extent.zero:
        yield MapEntry(extent.offset, extent.length, bottom, True, None, None)
        return
    layer = layers[extent.depth]
    if not isinstance(layer, SparseImage):  # fixed VHD or raw: the file offset is the disk offset
        yield MapEntry(extent.offset, extent.length, extent.depth, False, extent.offset, layer.path)
        return
    bitmap = rules.bitmap_bytes(layer.block_size)
    pos, end = extent.offset, extent.end
    while pos < end:
        block, in_block = divmod(pos, layer.block_size)
        n = min(end - pos, layer.block_size - in_block)
        host = layer.bat[block] * SECTOR + bitmap + in_block
        yield MapEntry(pos, n, extent.depth, False, host, layer.path)
        pos += n
