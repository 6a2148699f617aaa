"""`vhdtool rebase`: give a differencing disk another parent.

Safe mode (like `qemu-img rebase`): wherever the child holds no data of its own and the old
chain reads differently from the new parent, the old data is copied into the child first; then
the child's header is pointed at the new parent. The child reads the same before and after.
``unsafe`` only rewrites the parent UUID, time stamp, name and locators (the parent was moved,
renamed or replaced by an identical copy).

Crash safety: a safe rebase works on a sparse copy of the child (``shadow``) that replaces it in
one rename once the data is copied and the header points at the new parent: in place, a power cut
could keep a bitmap bit whose data the page cache had not yet written (both unsynced), and the
child would read neither what it read nor what it should. Until the rename every reader sees the
old child on its old parent; after it, the new one. An interrupted rebase (Ctrl-C stops after the
current piece) leaves the child as it was. ``unsafe`` is one header write in place, after the new
locator data (``format.parentlink``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import ParentError, UsageError
from vhdtool.format.blockdev import BlockDevice, Extent
from vhdtool.format.chain import open_image
from vhdtool.format.image import ImageBase
from vhdtool.format.layout import hold_for_replacing
from vhdtool.format.metadata import read_metadata
from vhdtool.format.parentlink import point_at_parent
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING
from vhdtool.format.validate import refuse_corrupt_for_writing
from vhdtool.ops.datapath import Meter, ProgressCallback, data_runs, pieces, read_grid, union_runs
from vhdtool.ops.editing import edit_image, file_stamp, restamp_children
from vhdtool.ops.family import refuse_if_children
from vhdtool.ops.interrupts import deferred_interrupts, graceful_stop
from vhdtool.ops.shadow import shadow_copy

GRAIN = 64 * 1024
"""Granularity of the copy: a piece that differs is copied in 64 KiB grains that differ."""


@dataclass(frozen=True, slots=True)
class Rebased:
    child: str
    parent: str
    unsafe: bool
    copied_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"filename": self.child, "backing-filename": self.parent, "unsafe": self.unsafe,
                "copied-bytes": self.copied_bytes}  # fmt: skip


def rebase(
    child: str | os.PathLike[str],
    parent: str | os.PathLike[str],
    *,
    unsafe: bool = False,
    progress: ProgressCallback | None = None,
    children: list[str] | None = None,
) -> Rebased:
    """Point ``child`` at ``parent``. Safe mode keeps what it (and so its own children) reads;
    ``unsafe`` is refused while differencing children of ``child`` (beside it, or in the
    ``children`` folders) read through it."""
    child, parent = os.fspath(child), os.fspath(parent)
    meta = read_metadata(child)
    if meta.disk_type != DISK_TYPE_DIFFERENCING:
        raise UsageError(f"{child}: is a {meta.type_name} disk, not a differencing disk")
    refuse_corrupt_for_writing(meta)  # judged here, by the child's own name: a safe rebase writes a copy
    if unsafe:
        refuse_if_children(child, children or [], "an unsafe rebase (content not kept)")
    before = file_stamp(child)
    with open_image(parent) as new_parent:  # validates the new parent's whole chain
        for image in new_parent.chain():
            if os.path.samefile(image.path, child) or image.meta.uuid == meta.uuid:
                raise ParentError(f"{parent}: its chain contains {child}; a disk cannot be its own ancestor")
        parent_uuid = bytes(new_parent.meta.footer.unique_id)
        if unsafe:
            copied = 0
            with edit_image(child) as editor, deferred_interrupts():
                point_at_parent(editor, child, parent, parent_uuid, file_stamp(parent))
        else:
            held = hold_for_replacing(child)  # nobody writes the child between the copy and the rename
            try:
                with shadow_copy(child) as copy:
                    copied = _copy_differences(copy, new_parent, progress)
                    with edit_image(copy) as editor, deferred_interrupts():
                        point_at_parent(editor, copy, parent, parent_uuid, file_stamp(parent))
            finally:
                if held is not None:
                    os.close(held)
    restamp_children(child, [os.path.dirname(os.path.abspath(child))], before)
    return Rebased(child, parent, unsafe, copied)


def _copy_differences(child: str, new_parent: ImageBase, progress: ProgressCallback | None) -> int:
    """Copy into the child what its old chain shows and the new parent does not (same content)."""
    try:
        image = open_image(child, writable=True)
    except ParentError as e:
        raise ParentError(f"{e} (a safe rebase reads the old parent; use --unsafe if it is gone)") from None
    try:
        below = [e for e in image.extents() if e.zero or e.depth > 0]  # what the child does not hold
        candidates = _intersect(union_runs(data_runs(image), data_runs(new_parent)), below)
        meter = Meter(progress, sum(r.length for r in candidates))
        with graceful_stop() as stop:
            for offset, length in pieces(candidates, read_grid(image)):
                if stop():
                    break
                old = image.pread(offset, length)
                new = _read(new_parent, offset, length)
                if old != new:
                    for start in range(0, length, GRAIN):
                        end = min(length, start + GRAIN)
                        if old[start:end] != new[start:end]:
                            image.pwrite(offset + start, old[start:end])
                            meter.written += end - start
                meter.add(length)
            with deferred_interrupts():
                image.flush()
        return meter.written
    finally:
        image.close_chain()


def _read(dev: BlockDevice, offset: int, length: int) -> bytes:
    """``dev``'s bytes, zeros past its end (a smaller parent)."""
    inside = max(0, min(length, dev.size - offset))
    return (dev.pread(offset, inside) if inside else b"") + bytes(length - inside)


def _intersect(runs: list[Extent], mask: list[Extent]) -> list[Extent]:
    """Parts of ``runs`` inside ``mask`` (both sorted, non-overlapping)."""
    out: list[Extent] = []
    i = 0
    for run in runs:
        while i < len(mask) and mask[i].end <= run.offset:
            i += 1
        j = i
        while j < len(mask) and mask[j].offset < run.end:
            lo, hi = max(run.offset, mask[j].offset), min(run.end, mask[j].end)
            if hi > lo:
                if out and out[-1].end == lo:
                    out[-1] = Extent(out[-1].offset, hi - out[-1].offset, False)
                else:
                    out.append(Extent(lo, hi - lo, False))
            j += 1
    return out
