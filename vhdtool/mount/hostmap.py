"""Where a read of the raw view lies in the image files, so libfuse can copy it straight from there.

A read that falls in one run held by one file of the chain (a whole-present block of a dynamic
or differencing disk, a fixed disk) is answered with that file's descriptor and offset: libfuse
copies from the page cache into the reply itself, and the bytes never pass through Python
(measured: 20% less server CPU per GiB, 1.55-1.67 GB/s instead of 1.07-1.4 GB/s). The address is
the one ``vhdtool map`` reports. Anything else (a partly present block, a run crossing files)
is read through the BlockDevice as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhdtool.disk.view import PartitionView
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.image import ImageBase
from vhdtool.ops.map import _located


@dataclass(frozen=True, slots=True)
class Place:
    """Bytes of a read: in file ``fd`` at ``offset``, or zeros when ``fd`` is None."""

    fd: int | None
    offset: int = 0


def locate(dev: BlockDevice, offset: int, length: int) -> Place | None:
    """Where ``length`` bytes at ``offset`` of ``dev`` are, if in one place; None otherwise."""
    while isinstance(dev, PartitionView):
        offset += dev.offset
        dev = dev.dev
    if not isinstance(dev, ImageBase) or length == 0:
        return None
    runs = list(dev.extents(offset, length))
    if len(runs) != 1:
        return None
    layers: list[BlockDevice] = list(dev.chain())
    places = list(_located(runs[0], layers, len(layers) - 1))
    if len(places) != 1:
        return None
    place = places[0]
    if place.zero:
        return Place(None)
    return Place(layers[place.depth].fileno(), place.offset)  # type: ignore[attr-defined]
