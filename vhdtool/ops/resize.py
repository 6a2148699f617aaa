"""`vhdtool resize`: grow or shrink a fixed or dynamic disk, in place.

Both footers get the new Current and Original Size and a geometry every reader agrees with
(``rules.geometry_for_new_image``). Growing a dynamic disk whose BAT has no room for the new
entries moves the blocks (and parent locator data) that follow the BAT to the end of the file
first, as VirtualBox does. Shrinking refuses to drop data unless forced; blocks past the new end
are dropped and the file is packed. Differencing disks are refused: their size is their parent's.

Crash safety (in-place, ordered writes; Ctrl-C is held back until a step completes):
- dynamic grow: moved blocks are copied and synced before the BAT points at them, the new BAT
  entries are written before the header counts them, the footer (the new size) comes last, so
  an interruption leaves the old size with the same content;
- dynamic shrink: the footer with the new size goes first, then the tail of a block the new end
  cuts in two is zeroed (outside the disk by then), then the dropped BAT entries and the packing,
  so an interruption leaves the old or the new size (plus reclaimable space); growing zeroes that
  tail before anything else, while it is still outside the disk;
- fixed grow: the footer is moved to the new end in one step over a hole (fallocate
  INSERT_RANGE, on ext4 and XFS when the sizes are multiples of 4 KiB), then it gets the new size:
  the old disk or the new one at every step. Elsewhere the footer is written at the new end, then
  the old footer's 512 bytes are zeroed; a power cut between the two leaves the new size with
  those bytes not yet zeroed;
- fixed shrink: the footer at the end gets the new size, then it is written at the new end and
  the file cut after it: the new size from the first step on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from vhdtool.errors import IoError, RefusedError, UsageError
from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.chain import open_image
from vhdtool.format.fallocate import insert_range
from vhdtool.format.fixed import FixedImage
from vhdtool.format.metadata import read_metadata
from vhdtool.format.rewrite import MetadataEditor
from vhdtool.format.sparse import SparseImage
from vhdtool.format.sparselayout import BlockLayout, stored_blocks, table_bytes
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING, FOOTER_SIZE, HEADER_SIZE, UNALLOCATED
from vhdtool.ops.compact import refuse_saved_state
from vhdtool.ops.datapath import CHUNK, data_runs, is_zero, pieces
from vhdtool.ops.family import refuse_if_children
from vhdtool.ops.interrupts import deferred_interrupts
from vhdtool.ops.packing import pack

SHRINK_WARNING = "the disk shrank: the filesystem (and partitions) inside must have been shrunk first"


@dataclass(frozen=True, slots=True)
class Resized:
    path: str
    type: str
    old_size: int
    new_size: int
    moved_blocks: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def target_size(spec: int | str, current: int) -> int:
    """An absolute size, or '+1G' / '-1G' relative to ``current``."""
    if isinstance(spec, int):
        return spec
    sign, value = rules.parse_size(spec)
    return current + value if sign == "+" else current - value if sign == "-" else value


def resize(
    path: str | os.PathLike[str], size: int | str, *, force: bool = False, children: list[str] | None = None
) -> Resized:
    """Resize a fixed or dynamic VHD to ``size`` bytes (or '+N'/'-N'); ``force`` drops data.

    A shrink is refused while differencing children (beside the disk, or in the ``children``
    folders) read through it: past the new end they would read zeros where they read data."""
    path = os.fspath(path)
    meta = read_metadata(path)
    if meta.disk_type == DISK_TYPE_DIFFERENCING:
        raise UsageError(
            f"{path}: is a differencing disk; its size is its parent's (merge it, or resize the base "
            "and create a new child)"
        )
    refuse_saved_state(path, meta.footer.saved_state, "resize it")
    old = meta.virtual_size
    new = target_size(size, old)
    if new <= 0:
        raise UsageError(f"{path}: new size {new} is not positive (current size {old})")
    rules.validate_virtual_size(new, meta.type_name)
    if new < old:
        refuse_if_children(path, children or [], f"shrinking it to {new} bytes")
    if new == old:
        return Resized(path, meta.type_name, old, new)
    image = open_image(path, writable=True)
    try:
        if new < old and not force and _holds_data(image, new):
            raise RefusedError(
                f"{path}: shrinking to {new} bytes would drop data stored past that offset; shrink the "
                "filesystem inside first, then use --force"
            )
        editor = MetadataEditor(image.fileno(), image.meta)
        geometry = rules.geometry_for_new_image(new)
        fields = {
            "current_size": new,
            "original_size": new,
            "cylinders": geometry.cylinders,
            "heads": geometry.heads,
            "sectors_per_track": geometry.sectors_per_track,
        }
        with deferred_interrupts():
            try:
                if isinstance(image, FixedImage):
                    _resize_fixed(editor, old, new, fields)
                    moved = 0
                else:
                    assert isinstance(image, SparseImage)
                    moved = _resize_dynamic(editor, image, new, fields)
            except OSError as e:
                now = editor.meta.virtual_size
                raise IoError(
                    f"{path}: resize stopped: write failed: {e.strerror or e}; the disk is {now} bytes "
                    f"({'unchanged' if now == old else 'the new size'})"
                ) from None
    finally:
        image.close_chain()
    return Resized(path, meta.type_name, old, new, moved, [SHRINK_WARNING] if new < old else [])


def _holds_data(image: BlockDevice, offset: int) -> bool:
    for start, length in pieces(data_runs(image, offset, image.size - offset), CHUNK):
        if not is_zero(image.pread(start, length)):
            return True
    return False


def _resize_fixed(editor: MetadataEditor, old: int, new: int, fields: dict[str, int]) -> None:
    old_end = editor.end
    if new < old:
        # the footer at the end says the new size first (the bytes after the disk are then just
        # unused), then it is written at the new end and the file cut after it
        editor.set_footer(**fields)
        editor.sync()
        editor.truncate(new)
        return
    if old_end == old and insert_range(editor.fd, old, new - old):
        # the footer moved to the new end in one step over a hole: the old disk, then the new size
        editor.end = new
        editor.sync()
        editor.set_footer(**fields)
        editor.sync()
        return
    editor.end = new
    editor.set_footer(**fields)
    editor.sync()
    # what was the footer (and anything after the old disk) is now disk space that must read zeros
    editor.zero(old, min(new, old_end + FOOTER_SIZE) - old)
    editor.sync()


def _resize_dynamic(editor: MetadataEditor, image: SparseImage, new: int, fields: dict[str, int]) -> int:
    bs = image.block_size
    needed = -(-new // bs)
    if new > image.size:
        # the part of the last block past the old end joins the disk: it must read zeros. It lies
        # outside the old disk, so zeroing it first changes nothing any reader sees.
        _zero_block_tail(editor, image, image.size)
        _drop_blocks_from(editor, image, -(-image.size // bs))
        moved = _grow_bat(editor, image, needed) if needed > len(image.bat) else 0
        editor.set_footer(**fields)
        editor.sync()
        return moved
    editor.set_footer(**fields)
    editor.sync()
    # the tail of a block cut in two must read zeros if the disk grows again; zeroed only now that
    # it lies outside the disk, so an interruption never leaves the old size with zeros in it
    _zero_block_tail(editor, image, new)
    _drop_blocks_from(editor, image, needed)
    return 0


def _drop_blocks_from(editor: MetadataEditor, image: SparseImage, first: int) -> None:
    """Unallocate the blocks from index ``first`` on (wholly outside the disk) and pack the file.

    After a shrink they hold what was cut off; before a grow, whatever another tool (or an
    interrupted shrink) left past the end, which would otherwise reappear inside the grown disk."""
    beyond = {i: UNALLOCATED for i in range(first, len(image.bat)) if image.bat[i] != UNALLOCATED}
    if beyond:
        editor.set_bat(beyond)
        editor.sync()
        pack(editor, image.block_size)


def _zero_block_tail(editor: MetadataEditor, image: SparseImage, end: int) -> None:
    """Zero what the block holding offset ``end`` stores from ``end`` on (nothing if allocated
    blocks end there), and sync."""
    layout = BlockLayout(image.block_size)
    last, in_block = divmod(end, layout.block_size)
    if not in_block or last >= len(image.bat) or image.bat[last] == UNALLOCATED:
        return
    editor.zero(layout.data_offset(image.bat[last], in_block), layout.block_size - in_block)
    editor.sync()


def _grow_bat(editor: MetadataEditor, image: SparseImage, needed: int) -> int:
    """Make room for ``needed`` BAT entries: move the blocks that follow the table to the end of
    the file (a dynamic disk has no parent locator data to move)."""
    assert editor.header is not None
    table = int(editor.header.table_offset)
    old_entries = len(image.bat)
    new_end = table + table_bytes(needed)
    header_at = int(editor.footer.data_offset)
    if table < header_at + HEADER_SIZE and header_at < new_end:
        raise UsageError(f"{image.path}: the dynamic header follows the BAT; the table cannot grow in place")
    layout = BlockLayout(image.block_size)
    in_way = [(start, index) for start, index in stored_blocks(image.meta) if start < new_end]
    old_end = editor.end
    try:
        if editor.end < new_end:
            editor.reserve(new_end - editor.end)  # nothing new may land where the table will grow
        moves = {index: layout.entry_for(editor.append_copy(start, layout.span)) for start, index in in_way}
    except OSError:
        # nothing points past the old end yet: give the room back rather than leave it leaked
        with contextlib.suppress(OSError):
            editor.truncate(old_end)
        raise
    if moves:
        editor.sync()  # the copies first, then the entries pointing at them
        editor.set_bat(moves)
        editor.sync()
    editor.extend_bat(old_entries, needed)
    editor.sync()  # the new entries read 'unallocated' before the header counts them
    editor.set_header(max_table_entries=needed)
    image.bat.extend([UNALLOCATED] * (needed - old_entries))
    editor.sync()
    return len(moves)
