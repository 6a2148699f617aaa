"""Where everything sits in the file of a dynamic or differencing VHD: the one layout model.

A block is stored as its sector bitmap (one bit a sector, padded to a whole sector) followed by
its data; the BAT entry of a block holds the sector its bitmap starts at, so the block occupies
``span`` bytes from there. New images put the footer copy at 0, the dynamic header at 512, the
BAT at 1536 (padded to a sector), parent locator data after the BAT, then the blocks.

Everything that is not a block (footer copy, header, BAT, locator data) is a metadata range,
by one rule (``metadata_ranges``) that check, repair, packing and the torn-tail test share. A
locator's data is counted wherever it has an offset and takes room (its data space, or its data
length when the space field says nothing: readers read the length), rounded up to whole sectors,
because that is the smallest unit a block or a footer can be put at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from vhdtool.format import rules
from vhdtool.format.batruns import allocated_indexes
from vhdtool.format.rules import SECTOR
from vhdtool.format.structs import FOOTER_SIZE, HEADER_SIZE

if TYPE_CHECKING:
    from vhdtool.format.locators import Locator
    from vhdtool.format.metadata import ImageMetadata

HEADER_OFFSET = FOOTER_SIZE
"""Where new images put the dynamic header: right after the footer copy."""
BAT_OFFSET = HEADER_OFFSET + HEADER_SIZE
BAT_ENTRY_BYTES = 4
DATA_ALIGNMENT = 4096
"""New blocks' data starts on a page of the file, as Windows lays them out: a block's reads and
writes then cover whole pages of the page cache (and whole filesystem blocks for a copy that
shares extents), never a page split with the bitmap before it."""


def round_up(n: int, to: int = SECTOR) -> int:
    return -(-n // to) * to


def valid_block_size(block_size: int) -> bool:
    """Whether a Block Size field can describe blocks at all: a power of two from a sector to 256
    MiB (what readers accept; the sizes vhdtool creates are narrower, ``rules.validate_block_size``)."""
    return SECTOR <= block_size <= rules.MAX_BLOCK_SIZE and not block_size & (block_size - 1)


def table_entries(size: int, block_size: int) -> int:
    """BAT entries a disk of ``size`` bytes needs."""
    return -(-size // block_size)


def table_covers(entries: int, block_size: int, size: int) -> bool:
    """Whether a BAT of ``entries`` blocks of ``block_size`` bytes describes a disk of ``size`` bytes."""
    return entries * block_size >= size


def table_bytes(entries: int) -> int:
    """Bytes the BAT takes in the file: its entries padded to a sector."""
    return round_up(entries * BAT_ENTRY_BYTES)


class BlockLayout:
    """How a block of ``block_size`` bytes is stored: its bitmap, then its data. A value: its two
    sizes are set once, here, and only read after."""

    __slots__ = ("bitmap_size", "block_size")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.bitmap_size = rules.bitmap_bytes(block_size)

    def __repr__(self) -> str:
        return f"BlockLayout(block_size={self.block_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockLayout) and other.block_size == self.block_size

    def __hash__(self) -> int:
        return hash(self.block_size)

    @property
    def span(self) -> int:
        """Bytes a stored block takes in the file: bitmap and data."""
        return self.bitmap_size + self.block_size

    @staticmethod
    def start(entry: int) -> int:
        """File offset of the block a BAT entry points at (where its bitmap starts)."""
        return entry * SECTOR

    @staticmethod
    def entry_for(start: int) -> int:
        """The BAT entry pointing at a block stored at file offset ``start`` (sector aligned)."""
        return start // SECTOR

    def data_offset(self, entry: int, in_block: int = 0) -> int:
        """File offset of byte ``in_block`` of the data of the block a BAT entry points at."""
        return entry * SECTOR + self.bitmap_size + in_block

    def next_start(self, cursor: int) -> int:
        """Where a new block goes at or after ``cursor``: its data on a page of the file."""
        return round_up(cursor + self.bitmap_size, DATA_ALIGNMENT) - self.bitmap_size

    def full_bitmap(self) -> bytes:
        """A bitmap marking every sector of the block present (what qemu and Windows write for a
        block written whole)."""
        sectors = self.block_size // SECTOR
        whole, rest = divmod(sectors, 8)
        used = b"\xff" * whole + (bytes([(0xFF00 >> rest) & 0xFF]) if rest else b"")
        return used + bytes(self.bitmap_size - len(used))


class MetadataRange(NamedTuple):
    """``length`` bytes at file ``offset`` that belong to a structure, not to a block."""

    offset: int
    length: int
    what: str

    @property
    def end(self) -> int:
        return self.offset + self.length


def locator_bytes(loc: Locator) -> int:
    """Bytes a parent locator's data takes in the file (0: it stores none); see the module doc."""
    if loc.data_offset <= 0:
        return 0
    return round_up(max(loc.data_space, loc.data_length))


def metadata_ranges(meta: ImageMetadata) -> list[MetadataRange]:
    """Every range of a sparse image's file that is not a block: footer copy, dynamic header, BAT
    and the data of each parent locator that stores some, in that order."""
    assert meta.header is not None and meta.bat is not None
    ranges = [
        MetadataRange(0, FOOTER_SIZE, "footer copy"),
        MetadataRange(int(meta.footer.data_offset), HEADER_SIZE, "dynamic header"),
        MetadataRange(int(meta.header.table_offset), table_bytes(len(meta.bat)), "BAT"),
    ]
    for loc in meta.locators:
        length = locator_bytes(loc)
        if length:
            ranges.append(MetadataRange(loc.data_offset, length, f"parent locator {loc.slot}"))
    return ranges


def metadata_end(meta: ImageMetadata) -> int:
    """Where the last metadata range ends."""
    return max(r.end for r in metadata_ranges(meta))


def stored_blocks(meta: ImageMetadata) -> list[tuple[int, int]]:
    """(file offset, block index) of the blocks the BAT points at, lowest offset first."""
    assert meta.bat is not None
    bat = meta.bat
    return sorted((bat[index] * SECTOR, index) for index in allocated_indexes(bat))


def free_ranges(meta: ImageMetadata, span: int, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) of the space between the metadata ranges and ``blocks`` ((file offset, index),
    as ``stored_blocks`` gives them) that nothing owns and that holds a whole block span (smaller
    gaps are alignment): where packing can put blocks. (What check calls a leak is only such
    space past the last metadata range: below it, metadata no step moves keeps the file from
    shrinking.)"""
    taken = sorted([(r.offset, r.end) for r in metadata_ranges(meta)] + [(b, b + span) for b, _ in blocks])
    gaps = []
    pos = 0
    for start, stop in taken:
        gap_start = round_up(pos)
        if start - gap_start >= span:
            gaps.append((gap_start, start))
        pos = max(pos, stop)
    return gaps
