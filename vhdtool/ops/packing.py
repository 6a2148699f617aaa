"""Moving the blocks of a dynamic/differencing image down into free space and cutting the file.

Used by compact (after dropping blocks), resize (after a shrink drops blocks) and repair (to
reclaim leaked space). The image's content never changes, so every intermediate state is a
valid image with the same content:

1. the highest block is copied into the lowest free gap that holds a whole block (free: no BAT
   entry, no metadata points there), in batches;
2. the batch is synced, then the BAT entries are pointed at the copies and synced; until then
   the copies are unreferenced space, afterwards the originals are;
3. finally the footer is written right after the last block or metadata structure and the file
   is cut there.

Freed originals are not reused within a run, so a block is never written over space that the
BAT (as it is on disk) still points at.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass

from vhdtool.format import rules
from vhdtool.format.rewrite import MetadataEditor
from vhdtool.format.sparselayout import BlockLayout, free_ranges, metadata_end, round_up, stored_blocks

BATCH_BYTES = 64 * rules.MiB
"""Bytes of blocks moved between two syncs."""


@dataclass(slots=True)
class Packed:
    moved_blocks: int
    old_file_size: int
    new_file_size: int


def pack(
    editor: MetadataEditor,
    block_size: int,
    interrupted: Callable[[], bool] = lambda: False,
) -> Packed:
    """Move blocks down into free gaps and cut the file after the last structure (see module doc).

    ``interrupted()`` is asked between batches: when it returns True, packing stops early and the
    file is cut after whatever is highest now (the image stays valid, a second run continues).
    """
    meta, fd = editor.meta, editor.fd
    layout = BlockLayout(block_size)
    span = layout.span
    old_size = os.fstat(fd).st_size
    blocks = stored_blocks(meta)
    gaps = free_ranges(meta, span, blocks)
    moved = 0
    batch: dict[int, int] = {}
    batch_bytes = 0
    while blocks and gaps and not (batch_bytes == 0 and interrupted()):
        start, index = blocks[-1]
        gap_start, gap_end = gaps[0]
        if gap_start >= start:
            break
        editor.copy_block(start, gap_start, span)
        batch[index] = layout.entry_for(gap_start)
        batch_bytes += span
        blocks.pop()
        bisect.insort(blocks, (gap_start, index))
        gaps[0] = (gap_start + span, gap_end)
        if gap_end - (gap_start + span) < span:
            gaps.pop(0)
        if batch_bytes >= BATCH_BYTES:
            moved += _commit(editor, batch)
            batch, batch_bytes = {}, 0
    moved += _commit(editor, batch)
    end = max([metadata_end(meta)] + [start + span for start, _ in blocks])
    if round_up(end) < editor.end:
        editor.truncate(end)
    editor.sync()
    return Packed(moved, old_size, os.fstat(fd).st_size)


def _commit(editor: MetadataEditor, batch: dict[int, int]) -> int:
    if not batch:
        return 0
    editor.sync()  # the copies are on disk before any BAT entry points at them
    editor.set_bat(batch)
    editor.sync()
    return len(batch)
