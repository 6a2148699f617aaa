"""`vhdtool map`: which runs of a disk hold data, in which file of the chain and where in it.

The JSON has the shape of `qemu-img map --output=json` (start, length, depth, present, zero,
data, offset), plus ``file``: the path of the image that holds a data run. Runs nobody holds read
as zeros and carry the depth of the bottom image, as qemu reports them. A chain whose parent is
missing is still mapped as far as it goes: the runs left to the missing parent are neither zero nor
data but ``parent-missing``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vhdtool.errors import ParentError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.chain import open_for_inspection
from vhdtool.format.image import ImageBase
from vhdtool.format.placement import Placement, joined
from vhdtool.ops.devices import close_device, open_device

if TYPE_CHECKING:  # map copies nothing: the copying path's module is not loaded for its type
    from vhdtool.ops.datapath import ProgressCallback


def map_json(run: Placement) -> dict[str, Any]:
    """One line of `map --json`, in qemu-img map's key names plus ``file``."""
    d: dict[str, Any] = {
        "start": run.offset,
        "length": run.length,
        "depth": run.depth,
        "present": not run.parent_missing,
        "zero": run.zero and not run.parent_missing,
        "data": not run.zero,
    }
    if run.parent_missing:
        d["parent-missing"] = True
    if not run.zero:
        d["offset"] = run.file_offset
        d["file"] = run.path
    return d


def map_image(path: str | os.PathLike[str], fmt: str | None = None) -> list[Placement]:
    """The runs of ``path`` (a VHD with its chain, or a raw file) from offset 0 to its size."""
    dev = open_device(path, fmt)
    try:
        return list(map_device(dev))
    finally:
        close_device(dev)


def map_inspect(
    path: str | os.PathLike[str], fmt: str | None = None, progress: ProgressCallback | None = None
) -> tuple[list[Placement], list[str]]:
    """``map_image`` and the warnings of opening, also for a chain whose parent is missing;
    ``progress(done, total)`` follows the offset reached."""
    try:
        dev = open_device(path, fmt)
    except ParentError:
        image = open_for_inspection(path)
        with image:
            entries = [
                e._replace(parent_missing=True, depth=e.depth + 1) if e.zero else e
                for e in _reporting(map_device(image), image.size, progress)
            ]
            return entries, image.all_warnings()
    try:
        entries = list(_reporting(map_device(dev), dev.size, progress))
        return entries, dev.all_warnings() if isinstance(dev, ImageBase) else []
    finally:
        close_device(dev)


def _reporting(entries: Iterator[Placement], size: int, progress: ProgressCallback | None) -> Iterator[Placement]:
    for entry in entries:
        if progress is not None:
            progress(entry.end, size)
        yield entry


def map_device(dev: BlockDevice) -> Iterator[Placement]:
    """Every run of ``dev`` placed in its file, adjacent runs joined."""
    return joined(dev.place())
