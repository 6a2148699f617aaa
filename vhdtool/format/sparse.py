"""Dynamic and differencing VHDs: a BAT of blocks, each a sector bitmap followed by data.

Reads: one address mapping per block (``_map_block``) and one loop that clips requests at block
boundaries; a block whose bitmap is all ones is read with a single ``os.pread``. A clear bitmap
bit reads zeros in a dynamic disk and the parent's data in a differencing disk.

Writes allocate new blocks at the end of the file in an order that keeps a valid trailing
footer at every instant: the footer is written at the new end first, then the block's data and
bitmap into the gap, then the BAT entry. A crash leaves at worst a block no BAT entry points to
(a leak, which ``check`` reports and ``repair`` reclaims). The footer copy at offset 0 never
changes on allocation.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from vhdtool.errors import CorruptImageError, ReadOnlyError, io_error
from vhdtool.format import rules
from vhdtool.format.batruns import allocated_runs, bat_runs, count_allocated
from vhdtool.format.blockdev import (
    BlockDevice,
    Extent,
    NotPlaceable,
    Placement,
    check_range,
    clip_read,
    pwrite_all,
    zeros,
)
from vhdtool.format.fallocate import punch_hole
from vhdtool.format.image import ImageBase
from vhdtool.format.metadata import TORN_TAIL_LIMIT, ImageMetadata
from vhdtool.format.sparselayout import BlockLayout, valid_block_size
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING, SECTOR, UNALLOCATED, build_footer

GROWTH_BYTES = 32 * rules.MiB
"""How much room the trailing footer is moved out by at a time when blocks are allocated."""

FULL = None
"""Bitmap cache value meaning 'every sector of the block is present' (the common case)."""


def bit_runs(bitmap: bytes, start: int, end: int) -> Iterator[tuple[bool, int, int]]:
    """Runs of equal bits in sectors [start, end) of a block bitmap (MSB of byte 0 = sector 0).

    Whole bytes of a run (0xFF or 0x00) are skipped in one ``lstrip``; only the bits at the ends
    of a run are looked at one by one."""

    def bit(sector: int) -> bool:
        return bool((bitmap[sector >> 3] >> (7 - (sector & 7))) & 1)

    sector = start
    while sector < end:
        current = bit(sector)
        stop = sector + 1
        while stop < end and stop & 7 and bit(stop) == current:
            stop += 1
        if stop < end and stop & 7 == 0:
            whole = bitmap[stop >> 3 : end >> 3]
            stop += 8 * (len(whole) - len(whole.lstrip(b"\xff" if current else b"\x00")))
            while stop < end and bit(stop) == current:
                stop += 1
        yield current, sector, stop
        sector = stop


class SparseImage(ImageBase):
    """A dynamic (parent None) or differencing (parent set) VHD as a BlockDevice."""

    def __init__(
        self,
        meta: ImageMetadata,
        fd: int,
        writable: bool,
        parent: BlockDevice | None = None,
        sync_growth: bool = True,
        tolerate_cut_blocks: bool = False,
    ) -> None:
        assert meta.header is not None and meta.bat is not None
        super().__init__(meta, fd, writable, parent)
        self.is_differencing = meta.disk_type == DISK_TYPE_DIFFERENCING
        self.block_size = meta.block_size
        self._validate_layout(tolerate_cut_blocks)
        self._shift = self.block_size.bit_length() - 1
        self._mask = self.block_size - 1
        self._sectors_per_block = self.block_size // SECTOR
        self._layout = BlockLayout(self.block_size)
        self._bitmap_size = self._layout.bitmap_size
        self.bat = meta.bat
        self._bat_offset = int(meta.header.table_offset)
        self._bitmaps: dict[int, bytes | None] = {}
        self._write_lock = threading.RLock()
        self._footer_bytes = build_footer(meta.footer)
        # new blocks go where the trailing footer is now, sector aligned
        self._end = -(-meta.footer_offset // SECTOR) * SECTOR
        self._footer_at = meta.footer_offset
        self._sync_growth = sync_growth
        self._growth_hint = 0
        if meta.torn_tail is not None and writable:
            self._restore_torn_footer(meta.torn_tail)

    def _validate_layout(self, tolerate_cut_blocks: bool) -> None:
        meta, bs = self.meta, self.block_size
        problem = self._unreadable(meta, bs)
        cut = [] if problem else self._cut_blocks(meta, bs)
        if problem or cut:
            self._refuse_damage(problem, cut, tolerate_cut_blocks)
        if self.size > rules.MAX_DYNAMIC_SIZE:
            raise CorruptImageError(f"{self.path}: virtual size {self.size} exceeds 2040 GiB")

    def _refuse_damage(self, problem: str | None, cut: list[int], tolerate_cut_blocks: bool) -> None:
        """Raise for blocks that cannot be found or that the file's end cuts off, unless an
        inspection may describe the image with a warning."""
        # the checker's judgement of the Block Size field: only a damaged image needs it
        from vhdtool.format.validate import block_size_problem

        meta = self.meta
        if cut and not problem:
            problem = f"BAT entry {cut[0]} points at sector {meta.bat[cut[0]]}, past the end of the file"
            # described with a warning only while some stored block is whole (repair's rule too):
            # a file cut before all of its data is not taken for a disk
            whole = count_allocated(meta.bat) > len(cut)
            if tolerate_cut_blocks and whole and not self.writable and not block_size_problem(meta):
                more = f" (and {len(cut) - 1} more block(s))" if len(cut) > 1 else ""
                self.warnings.append(f"{self.path}: {problem}{more}: the file is truncated or the BAT damaged")
                problem = None
        if problem:
            # judged by a damaged Block Size field every block looks bad: name the field instead
            problem = block_size_problem(meta) or problem
            raise CorruptImageError(f"{self.path}: {problem} (run 'vhdtool check', then 'vhdtool repair')")

    def _unreadable(self, meta: ImageMetadata, bs: int) -> str | None:
        """Why the blocks cannot be found at all: a block size or BAT that cannot describe the disk."""
        if not valid_block_size(bs):
            return f"block size {bs} in the dynamic header is not valid"
        if len(meta.bat) * bs < self.size:
            return (
                f"the dynamic header's Max Table Entries field ({len(meta.bat)}) x block size {bs} does not "
                f"cover the disk of {self.size} bytes"
            )
        return None

    @staticmethod
    def _cut_blocks(meta: ImageMetadata, bs: int) -> list[int]:
        """The blocks whose data would lie past the end of the file (a truncated file or a bad BAT)."""
        layout = BlockLayout(bs)
        limit = meta.footer_offset - layout.span
        return [
            i
            for start, stop in allocated_runs(meta.bat)
            if layout.start(max(meta.bat[start:stop])) > limit
            for i in range(start, stop)
            if layout.start(meta.bat[i]) > limit
        ]

    def _restore_torn_footer(self, data_end: int) -> None:
        """Put back the footer an interrupted growth did not leave, at the end of the file. What lies
        between the data and it may hold a block that was in flight: it stays unused (a leak that
        check reports and repair reclaims), as the room of any interrupted growth does."""
        at = max(data_end, (self.meta.file_size - len(self._footer_bytes)) // SECTOR * SECTOR)
        self._pwrite_all(at, memoryview(self._footer_bytes))
        os.fsync(self._fd)
        self._end = self._footer_at = at
        self.warnings = [w for w in self.warnings if "footer at the end is missing" not in w]

    def place_own(self, offset: int, length: int, depth: int) -> Iterator[Placement]:
        """Within each block the data follows the sector bitmap; a run is split where blocks are
        not contiguous in the file."""
        pos, stop = offset, offset + length
        while pos < stop:
            block, in_block = pos >> self._shift, pos & self._mask
            n = min(stop - pos, self.block_size - in_block)
            if self.bat[block] == UNALLOCATED:  # the extents said this layer holds it: never guess
                raise NotPlaceable(f"{self.path}: block {block} is not allocated")
            yield Placement(pos, n, depth, False, self._data_offset(block, in_block), self.path, self._fd)
            pos += n

    # -- mapping ---------------------------------------------------------------------------

    def _bitmap(self, block: int) -> bytes | None:
        """The block's bitmap, or FULL when every bit is set (cached per block)."""
        try:
            return self._bitmaps[block]
        except KeyError:
            pass
        try:  # reached from extents() too, which no read wrapper covers
            raw = os.pread(self._fd, self._bitmap_size, self._layout.start(self.bat[block]))
        except OSError as e:
            raise io_error(self.path, "read", e) from None
        value = self._bitmap_from(raw)
        self._bitmaps[block] = value
        return value

    def _data_offset(self, block: int, in_block: int) -> int:
        return self._layout.data_offset(self.bat[block], in_block)

    # -- reading ---------------------------------------------------------------------------

    def _pread(self, offset: int, length: int) -> bytes:
        length = clip_read(self, offset, length)
        if length == 0:
            return b""
        block, in_block = offset >> self._shift, offset & self._mask
        if in_block + length <= self.block_size:  # one block: the common case, no assembly
            return self._read_in_block(block, in_block, length)
        out = bytearray(length)
        done = 0
        while done < length:
            block, in_block = (offset + done) >> self._shift, (offset + done) & self._mask
            n = min(self.block_size - in_block, length - done)
            out[done : done + n] = self._read_in_block(block, in_block, n)
            done += n
        return bytes(out)

    def _read_in_block(self, block: int, in_block: int, length: int) -> bytes:
        entry = self.bat[block]
        virtual = (block << self._shift) + in_block
        if entry == UNALLOCATED:
            return self._parent_read(virtual, length)
        bitmap = self._bitmap(block)
        if bitmap is FULL:
            return self._pread_exact(self._data_offset(block, in_block), length)
        out = bytearray(length)
        first, last = in_block // SECTOR, (in_block + length - 1) // SECTOR + 1
        for present, s0, s1 in bit_runs(bitmap, first, last):
            lo, hi = max(s0 * SECTOR, in_block), min(s1 * SECTOR, in_block + length)
            if present:
                out[lo - in_block : hi - in_block] = self._pread_exact(self._data_offset(block, lo), hi - lo)
            elif self.parent is not None:
                out[lo - in_block : hi - in_block] = self._parent_read(virtual - in_block + lo, hi - lo)
        return bytes(out)

    def _parent_read(self, offset: int, length: int) -> bytes:
        """What the layers below hold; zeros past a parent smaller than this disk (or no parent)."""
        parent = self.parent
        if parent is None or offset >= parent.size:
            return zeros(length)
        if offset + length <= parent.size:
            return parent.pread(offset, length)
        return parent.pread(offset, parent.size - offset) + bytes(offset + length - parent.size)

    def _pread_exact(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise CorruptImageError(f"{self.path}: short read at offset {offset}: file truncated?")
        return data

    # -- writing ---------------------------------------------------------------------------

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only")
        check_range(self, offset, len(data))
        view = memoryview(data).cast("B")
        with self._write_lock:
            while view:
                block, in_block = offset >> self._shift, offset & self._mask
                n = min(self.block_size - in_block, len(view))
                self._write_in_block(block, in_block, view[:n])
                view, offset = view[n:], offset + n

    def _write_in_block(self, block: int, in_block: int, chunk: memoryview) -> None:
        first, last = in_block // SECTOR, (in_block + len(chunk) - 1) // SECTOR + 1
        head, tail = in_block - first * SECTOR, last * SECTOR - (in_block + len(chunk))
        if head or tail:
            # partial sectors: complete them with what the disk reads there now (parent or zeros)
            block_start = block << self._shift
            buf = bytearray()
            if head:
                buf += self.pread(block_start + first * SECTOR, head)
            buf += chunk
            if tail:
                buf += self.pread(block_start + last * SECTOR - tail, tail)
            chunk = memoryview(bytes(buf))
        if self.bat[block] == UNALLOCATED:
            self._allocate(block, first, last, chunk)
            return
        self._pwrite_all(self._data_offset(block, first * SECTOR), chunk)
        bitmap = self._bitmap(block)
        if bitmap is not FULL:
            self._set_bits(block, bitmap, first, last)

    def _set_bits(self, block: int, bitmap: bytes, first: int, last: int) -> None:
        updated = bytearray(bitmap)
        for sector in range(first, last):
            updated[sector >> 3] |= 0x80 >> (sector & 7)
        if updated == bitmap:
            return
        lo, hi = first >> 3, ((last - 1) >> 3) + 1
        # the data is in place before the bits that make it visible
        self._pwrite_all(self._layout.start(self.bat[block]) + lo, memoryview(bytes(updated[lo:hi])))
        self._bitmaps[block] = self._bitmap_from(updated)

    def _bitmap_from(self, bitmap: bytes | bytearray) -> bytes | None:
        """FULL when the bits of every sector of the block are set, else the bitmap itself."""
        whole, tail = divmod(self._sectors_per_block, 8)
        if bitmap[:whole].count(0xFF) != whole:
            return bytes(bitmap)
        if tail and bitmap[whole] >> (8 - tail) != (1 << tail) - 1:
            return bytes(bitmap)
        return FULL

    def _allocate(self, block: int, first: int, last: int, chunk: memoryview) -> None:
        span = self._layout.span
        start = self._end
        if start + span > self._footer_at:
            self._grow(start, span)
        if self.is_differencing:
            bitmap = bytearray(self._bitmap_size)
            for sector in range(first, last):
                bitmap[sector >> 3] |= 0x80 >> (sector & 7)
        else:
            # dynamic: the whole block is present; the unwritten rest is a file hole, reading zeros,
            # as an unallocated block did (qemu lays blocks out the same way)
            bitmap = bytearray(b"\xff" * ((self._sectors_per_block + 7) // 8))
            bitmap += bytes(self._bitmap_size - len(bitmap))
        self._pwrite_all(start + self._bitmap_size + first * SECTOR, chunk)
        self._pwrite_all(start, memoryview(bytes(bitmap)))
        self._pwrite_all(self._bat_offset + 4 * block, memoryview((start // SECTOR).to_bytes(4, "big")))
        self._end = start + span
        self._bitmaps[block] = self._bitmap_from(bitmap)
        self.bat[block] = start // SECTOR

    def reserve(self, blocks: int) -> None:
        """A caller is about to allocate up to ``blocks`` new blocks (merge): each growth of the file
        then makes room for as many of them as an interrupted growth may leave unreferenced (see
        metadata's torn-tail rule), so fewer fdatasyncs; close() gives back what stays unused."""
        self._growth_hint = max(self._growth_hint, blocks)

    def _grow(self, start: int, span: int) -> None:
        """Move the trailing footer far enough out for the next blocks, before any of them is written.

        The footer lands at the new end first and (with sync_growth) is made durable at once, so
        neither a kill nor a power cut that drops the unsynced tail can leave a file without a
        valid trailing footer. Room for several blocks is reserved at a time to keep those fsyncs
        rare; close() gives back what was not used. After a crash the unused room is a leak.
        """
        unallocated = len(self.bat) - count_allocated(self.bat)
        wanted = min(max(GROWTH_BYTES // span, self._growth_hint), TORN_TAIL_LIMIT // span)
        blocks = max(1, min(wanted, unallocated))
        new_footer_at = start + blocks * span
        self._pwrite_all(new_footer_at, memoryview(self._footer_bytes))
        if self._sync_growth:
            os.fdatasync(self._fd)
        self._footer_at = new_footer_at

    def _pwrite_all(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        pwrite_all(self._fd, offset, data)

    def _flush(self) -> None:
        if self.writable:
            os.fsync(self._fd)

    def _trim(self, offset: int, length: int) -> None:
        """Discard: free the file pages under [offset, offset + length) of allocated blocks. They
        read as zeros afterwards (the bitmap keeps them present, so a differencing child does not
        fall through to its parent); the BAT is not touched, so no block leaks. `compact` later
        drops blocks that became all zeros."""
        check_range(self, offset, length)
        end = offset + length
        with self._write_lock:
            while offset < end:
                block, in_block = offset >> self._shift, offset & self._mask
                n = min(self.block_size - in_block, end - offset)
                if self.bat[block] != UNALLOCATED:
                    punch_hole(self._fd, self._data_offset(block, in_block), n)
                offset += n

    # -- extents ---------------------------------------------------------------------------

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self.size if length is None else offset + length
        if offset >= end:
            return
        # whole runs of unallocated blocks at once: the cost follows the allocated blocks
        for allocated, first, last in bat_runs(self.bat, offset >> self._shift, ((end - 1) >> self._shift) + 1):
            lo, hi = max(offset, first << self._shift), min(end, last << self._shift)
            if not allocated:
                yield from self._below(lo, hi - lo)
                continue
            pos = lo
            while pos < hi:
                block, in_block = pos >> self._shift, pos & self._mask
                n = min(self.block_size - in_block, hi - pos)
                yield from self._block_extents(block, in_block, n)
                pos += n

    def _block_extents(self, block: int, in_block: int, length: int) -> Iterator[Extent]:
        virtual = (block << self._shift) + in_block
        entry = self.bat[block]
        if entry == UNALLOCATED:
            yield from self._below(virtual, length)
            return
        bitmap = self._bitmap(block)
        if bitmap is FULL:
            yield Extent(virtual, length, False, 0, self.path)
            return
        first, last = in_block // SECTOR, (in_block + length - 1) // SECTOR + 1
        base = virtual - in_block
        for present, s0, s1 in bit_runs(bitmap, first, last):
            lo, hi = max(s0 * SECTOR, in_block), min(s1 * SECTOR, in_block + length)
            if present:
                yield Extent(base + lo, hi - lo, False, 0, self.path)
            else:
                yield from self._below(base + lo, hi - lo)

    def _below(self, offset: int, length: int) -> Iterator[Extent]:
        parent = self.parent
        inside = 0 if parent is None else max(0, min(length, parent.size - offset))
        if inside:
            for e in parent.extents(offset, inside):
                yield e if e.zero else Extent(e.offset, e.length, False, e.depth + 1, e.source)
        if inside < length:
            yield Extent(offset + inside, length - inside, True)

    def allocated_blocks(self) -> int:
        return count_allocated(self.bat)

    def _close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self.writable:
                self._release_reserved_room()
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def _release_reserved_room(self) -> None:
        """Put the footer right after the last block and cut the file there."""
        if self._footer_at <= self._end:
            return
        with self._write_lock:
            self._pwrite_all(self._end, memoryview(self._footer_bytes))
            os.ftruncate(self._fd, self._end + len(self._footer_bytes))
            self._footer_at = self._end
