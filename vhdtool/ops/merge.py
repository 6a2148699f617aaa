"""`vhdtool merge`: commit a differencing disk's data into its parent or a further ancestor.

Like Merge-VHD and `vhd-util coalesce`: every run that the child (or a disk between it and the
ancestor) holds is written into the ancestor, which then reads what the child read. The chain is
rebuilt with the ancestor opened for writing and the upper layers stacked over it read-only, so
the child's data is read through the same code that reads the chain.

Crash safety: in-place writes into the ancestor only, each an ordinary block write (footer moved
first, data, then the BAT entry). Only runs the upper layers hold are written, so the child reads
exactly as before at every step: an interrupted merge (Ctrl-C stops after the current piece)
leaves the chain intact and can be run again; the ancestor alone then holds part of the data.
Because the ancestor's content changes, merging is refused while other children of it are in
sight (they would change under their owners), unless forced.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from vhdtool.errors import RefusedError, UsageError
from vhdtool.format.blockdev import BlockDevice, Extent, merge_extents
from vhdtool.format.chain import open_image
from vhdtool.format.layers import open_over
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING, UNALLOCATED
from vhdtool.format.validate import refuse_corrupt_for_writing
from vhdtool.ops.datapath import Meter, ProgressCallback, is_zero, pieces, read_grid
from vhdtool.ops.editing import edit_image, file_stamp, restamp_children
from vhdtool.ops.family import children_of
from vhdtool.ops.interrupts import deferred_interrupts, graceful_stop


@dataclass(frozen=True, slots=True)
class Merged:
    child: str
    into: str
    merged: list[str]
    """The disks whose data went into ``into`` (the child first)."""
    data_bytes: int
    deleted: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """Kept intermediate disks whose own view changed (only the child's view is preserved)."""

    def as_json(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class _Plan:
    paths: list[str]
    """The chain from the child down to the ancestor, inclusive."""
    uuids: list[uuid.UUID]
    size: int


def merge(
    child: str | os.PathLike[str],
    into: str | os.PathLike[str] | None = None,
    *,
    delete_child: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Merged:
    """Write ``child``'s data into its parent (or the ancestor ``into``).

    ``delete_child`` removes the child (and the disks between it and the ancestor) afterwards;
    ``force`` merges even when other children of the ancestor are found beside it.
    """
    child = os.fspath(child)
    plan = _plan(child, None if into is None else os.fspath(into))
    ancestor, upper = plan.paths[-1], plan.paths[:-1]
    others = children_of(plan.uuids[-1], {os.path.dirname(os.path.abspath(p)) for p in plan.paths}, exclude=upper)
    if others and not force:
        raise RefusedError(
            f"{ancestor}: other differencing disks depend on it ({', '.join(others)}); merging would change "
            "what they read (use --force to merge anyway)"
        )
    written = _copy_down(plan, progress)
    deleted: list[str] = []
    stale: list[str] = []
    if delete_child:
        for path in upper:
            os.unlink(path)
            deleted.append(path)
    else:
        if len(upper) == 1:
            _restamp(child, ancestor)
        stale = upper[1:]
    return Merged(child, ancestor, upper, written, deleted, stale)


def _plan(child: str, into: str | None) -> _Plan:
    with open_image(child) as top:
        if top.meta.disk_type != DISK_TYPE_DIFFERENCING:
            raise UsageError(f"{child}: is a {top.meta.type_name} disk, not a differencing disk; nothing to merge")
        chain = list(top.chain())
        depth = 1
        if into is not None:
            matches = [i for i, img in enumerate(chain) if i and _same_file(img.path, into)]
            if not matches:
                raise UsageError(f"{into}: is not an ancestor of {child}")
            depth = matches[0]
        for upper in chain[:depth]:  # their data goes into the ancestor, and the child is restamped
            refuse_corrupt_for_writing(upper.meta)
        if chain[depth].size < top.size:
            raise UsageError(
                f"{chain[depth].path}: is smaller ({chain[depth].size} bytes) than {child} ({top.size} bytes)"
            )
        return _Plan([img.path for img in chain[: depth + 1]], [img.meta.uuid for img in chain[: depth + 1]], top.size)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _copy_down(plan: _Plan, progress: ProgressCallback | None) -> int:
    depth = len(plan.paths) - 1
    ancestor = open_image(plan.paths[-1], writable=True)
    layers: list[SparseImage] = []
    try:
        top: BlockDevice = ancestor
        for i in reversed(range(depth)):
            top = open_over(plan.paths[i], top, plan.uuids[i + 1])
            layers.append(top)
        runs = [e for e in merge_extents(iter(top.extents())) if not e.zero and e.depth < depth]
        meter = Meter(progress, sum(r.length for r in runs))
        if isinstance(ancestor, SparseImage):  # the ancestor grows by more at a time: fewer fdatasyncs
            ancestor.reserve(_blocks_to_allocate(ancestor, runs))
        with graceful_stop() as stop:
            for offset, length in pieces(runs, read_grid(top)):
                if stop():
                    break
                data = top.pread(offset, length)
                # zeros over zeros: nothing to write (and no block to allocate in the ancestor)
                if not (is_zero(data) and all(e.zero for e in ancestor.extents(offset, length))):
                    ancestor.pwrite(offset, data)
                    # start writing it back now (the pages are not read again): the final flush
                    # then finds little left, and the copy is not throttled by piled-up dirty pages
                    os.posix_fadvise(ancestor.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    meter.written += length
                meter.add(length)
            with deferred_interrupts():
                ancestor.flush()
        return meter.written
    finally:
        for layer in layers:
            layer.close()
        ancestor.close_chain()


def _blocks_to_allocate(image: SparseImage, runs: list[Extent]) -> int:
    """How many unallocated blocks of ``image`` the runs touch."""
    touched: set[int] = set()
    for run in runs:
        touched.update(range(run.offset // image.block_size, (run.end - 1) // image.block_size + 1))
    return sum(1 for block in touched if block < len(image.bat) and image.bat[block] == UNALLOCATED)


def _restamp(child: str, parent: str) -> None:
    """The kept child names its parent's new modification time, so opening it does not warn (and
    so on down to the child's own children, whose parent file changed with it)."""
    before = file_stamp(child)
    with edit_image(child) as editor, deferred_interrupts():
        editor.set_header(parent_timestamp=file_stamp(parent))
        editor.sync()
    restamp_children(child, [os.path.dirname(os.path.abspath(child))], before)
