"""Where the bytes of a device live in files, so that reads can be spliced to the socket.

The image's own ``extents()`` says which layer of the chain holds each run; the layer's layout
says where: a raw file or a fixed VHD holds disk offset X at file offset X, a dynamic or
differencing VHD holds it in its block's data area (BAT entry, then the sector bitmap), the same
computation `vhdtool map` makes (``ops/map.py``). Nothing here reads or parses the files.

Devices of any other kind (partition views, overlays) give None, and the caller reads them
with ``pread``. Block positions never move while an image is open (only offline commands
rewrite a BAT), so a run located here stays valid for the read that asked for it.
"""

from __future__ import annotations

from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice, RawFile, merge_extents
from vhdtool.format.fixed import FixedImage
from vhdtool.format.image import ImageBase
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import SECTOR, UNALLOCATED

FileRun = tuple[int, int, int, int]
"""(disk offset, length, file descriptor, file offset); descriptor -1 for a run of zeros."""


def locate(dev: BlockDevice, offset: int, length: int) -> list[FileRun] | None:
    """The runs of [offset, offset + length) as file ranges, adjacent ones joined; None if
    ``dev`` is not a chain of raw/fixed/dynamic/differencing files."""
    if isinstance(dev, ImageBase):
        layers: list[object] = list(dev.chain())
    elif isinstance(dev, RawFile):
        layers = [dev]
    else:
        return None
    end = offset + length
    runs: list[FileRun] = []
    for extent in merge_extents(dev.extents(offset, length)):
        start, stop = max(extent.offset, offset), min(extent.end, end)
        if stop <= start:
            continue
        if extent.zero:
            _add(runs, start, stop - start, -1, 0)
            continue
        layer = layers[extent.depth] if extent.depth < len(layers) else None
        if isinstance(layer, (RawFile, FixedImage)):
            _add(runs, start, stop - start, layer.fileno(), start)
        elif isinstance(layer, SparseImage):
            if not _add_sparse(runs, layer, start, stop):
                return None
        else:
            return None
    return runs


def _add_sparse(runs: list[FileRun], layer: SparseImage, start: int, stop: int) -> bool:
    bitmap = rules.bitmap_bytes(layer.block_size)
    fd = layer.fileno()
    pos = start
    while pos < stop:
        block, in_block = divmod(pos, layer.block_size)
        n = min(stop - pos, layer.block_size - in_block)
        entry = layer.bat[block]
        if entry == UNALLOCATED:  # the extents said this layer holds it: do not guess
            return False
        _add(runs, pos, n, fd, entry * SECTOR + bitmap + in_block)
        pos += n
    return True


def _add(runs: list[FileRun], offset: int, length: int, fd: int, file_offset: int) -> None:
    if runs:
        last_offset, last_length, last_fd, last_file = runs[-1]
        contiguous = fd == -1 or last_file + last_length == file_offset
        if last_fd == fd and last_offset + last_length == offset and contiguous:
            runs[-1] = (last_offset, last_length + length, fd, last_file)
            return
    runs.append((offset, length, fd, file_offset))
