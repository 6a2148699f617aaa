"""`vhdtool map`: which runs of a disk hold data, in which file of the chain and where in it.

The JSON has the shape of `qemu-img map --output=json` (start, length, depth, present, zero,
data, offset), plus ``file``: the path of the image that holds a data run. Runs nobody holds read
as zeros and carry the depth of the bottom image, as qemu reports them. A chain whose parent is
missing is still mapped as far as it goes: the runs left to the missing parent are neither zero nor
data but ``parent-missing``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import ParentError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.chain import open_for_inspection
from vhdtool.format.image import ImageBase
from vhdtool.format.placement import place
from vhdtool.ops.datapath import ProgressCallback
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
    parent_missing: bool = False
    """The run is left to a parent that cannot be found: what it reads is unknown."""

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start": self.start,
            "length": self.length,
            "depth": self.depth,
            "present": not self.parent_missing,
            "zero": self.zero and not self.parent_missing,
            "data": not self.zero,
        }
        if self.parent_missing:
            d["parent-missing"] = True
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


def map_inspect(
    path: str | os.PathLike[str], fmt: str | None = None, progress: ProgressCallback | None = None
) -> tuple[list[MapEntry], list[str]]:
    """``map_image`` and the warnings of opening, also for a chain whose parent is missing;
    ``progress(done, total)`` follows the offset reached."""
    try:
        dev = open_device(path, fmt)
    except ParentError:
        image = open_for_inspection(path)
        with image:
            entries = [
                dataclasses.replace(e, parent_missing=True, depth=e.depth + 1) if e.zero else e
                for e in _reporting(map_device(image), image.size, progress)
            ]
            return entries, image.all_warnings()
    try:
        entries = list(_reporting(map_device(dev), dev.size, progress))
        return entries, dev.all_warnings() if isinstance(dev, ImageBase) else []
    finally:
        close_device(dev)


def _reporting(entries: Iterator[MapEntry], size: int, progress: ProgressCallback | None) -> Iterator[MapEntry]:
    for entry in entries:
        if progress is not None:
            progress(entry.start + entry.length, size)
        yield entry


def map_device(dev: BlockDevice) -> Iterator[MapEntry]:
    pending: MapEntry | None = None
    for placed in place(dev):
        entry = MapEntry(
            placed.offset,
            placed.length,
            placed.depth,
            placed.zero,
            None if placed.zero else placed.file_offset,
            placed.path,
        )
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
