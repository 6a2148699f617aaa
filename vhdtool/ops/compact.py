"""`vhdtool compact`: give back the space of blocks that hold nothing, in place.

A block of a dynamic disk that reads as zeros, or a block of a differencing disk that reads
exactly what its parent holds there, is dropped (its BAT entry cleared); then the remaining
blocks are moved down into the holes and the file is cut after the last one (``packing``).

Crash safety: in-place writes ordered so that the image keeps its content at every step
(dropping a block changes nothing that reads; moved blocks are synced before the BAT points at
them). An interrupted compact (Ctrl-C stops at the next batch) leaves the same content and at
worst unreclaimed space; running it again finishes the job.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from vhdtool.errors import RefusedError, UsageError
from vhdtool.format.batruns import allocated_indexes
from vhdtool.format.chain import open_image
from vhdtool.format.metadata import read_metadata
from vhdtool.format.rewrite import MetadataEditor
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import UNALLOCATED
from vhdtool.ops.datapath import Meter, ProgressCallback, is_zero
from vhdtool.ops.editing import file_stamp, restamp_children
from vhdtool.ops.interrupts import StopRequest, graceful_stop
from vhdtool.ops.packing import pack


@dataclass(frozen=True, slots=True)
class Compacted:
    path: str
    dropped_blocks: int
    moved_blocks: int
    old_file_size: int
    new_file_size: int

    @property
    def reclaimed(self) -> int:
        return self.old_file_size - self.new_file_size

    def as_json(self) -> dict[str, Any]:
        d = {k.replace("_", "-"): v for k, v in asdict(self).items()}
        d["reclaimed-bytes"] = self.reclaimed
        return d


def refuse_saved_state(path: str, saved_state: int, what: str) -> None:
    if saved_state:
        raise RefusedError(
            f"{path}: the saved-state flag is set (a VM was suspended with this disk); refusing to {what}"
        )


def compact(path: str | os.PathLike[str], progress: ProgressCallback | None = None) -> Compacted:
    """Drop empty (or parent-identical) blocks and shrink the file; returns what was reclaimed."""
    path = os.fspath(path)
    meta = read_metadata(path)  # refuse before locking or opening a chain
    if not meta.is_sparse:
        raise UsageError(f"{path}: is a fixed disk; only dynamic and differencing disks can be compacted")
    refuse_saved_state(path, meta.footer.saved_state, "compact it")
    before = file_stamp(path)
    image = open_image(path, writable=True)
    try:
        assert isinstance(image, SparseImage)
        with graceful_stop() as stop:
            droppable = _droppable_blocks(image, progress, stop)
            editor = MetadataEditor(image.fileno(), image.meta)
            if droppable:
                editor.set_bat(dict.fromkeys(droppable, UNALLOCATED))  # each entry: the same content
                editor.sync()
            packed = pack(editor, image.block_size, interrupted=stop)
    finally:
        image.close_chain()
    restamp_children(path, [os.path.dirname(os.path.abspath(path))], before)  # same content, new file time
    return Compacted(path, len(droppable), packed.moved_blocks, packed.old_file_size, packed.new_file_size)


def _droppable_blocks(image: SparseImage, progress: ProgressCallback | None, stop: StopRequest) -> list[int]:
    bs = image.block_size
    inside = -(-image.size // bs)
    allocated = list(allocated_indexes(image.bat, 0, inside))
    beyond = list(allocated_indexes(image.bat, inside))
    meter = Meter(progress, len(allocated) * bs)
    out = list(beyond)  # blocks past the end of the disk hold nothing anyone can read
    for index in allocated:
        if stop():
            break
        start = index * bs
        length = min(bs, image.size - start)
        data = image.pread(start, length)
        # a differencing block is only worth keeping where it differs from what the parent reads
        same = is_zero(data) if image.parent is None else data == _parent_view(image, start, length)
        if same:
            out.append(index)
        meter.add(bs)
    return out


def _parent_view(image: SparseImage, offset: int, length: int) -> bytes:
    parent = image.parent
    if parent is None or offset >= parent.size:
        return bytes(length)
    inside = min(length, parent.size - offset)
    return parent.pread(offset, inside) + bytes(length - inside)
