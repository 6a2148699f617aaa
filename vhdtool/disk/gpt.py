"""GPT partition tables (UEFI 2.10 §5.3): read with CRC32 checks and backup fallback, and write.

Reading tries the primary header at LBA 1; when its header or entry-array CRC32 is wrong, the
backup header at the last LBA is used instead and a warning says so (the partitions are the
same, by construction of GPT). Writing lays out what sgdisk writes: a protective MBR, the primary
header and a 128-entry array at LBAs 1-33, and the mirror of both at the end of the disk.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from vhdtool.disk.mbr import build_mbr
from vhdtool.disk.structs import (
    GPT_ENTRIES_SECTORS,
    GPT_ENTRY_SIZE,
    GPT_HEADER_CRC_AT,
    GPT_NUM_ENTRIES,
    GPT_REVISION,
    GPT_SIGNATURE,
    SECTOR,
    GptEntry,
    GptHeader,
)
from vhdtool.disk.table import Partition, format_guid, guid_bytes
from vhdtool.errors import CorruptImageError, UsageError
from vhdtool.format.blockdev import BlockDevice

MAX_ENTRIES_BYTES = 1 << 20
"""Refuse entry arrays larger than this: a corrupt header must not make us read gigabytes."""
ZERO_GUID = bytes(16)
GPT_OVERHEAD_SECTORS = 1 + GPT_ENTRIES_SECTORS
"""Sectors one copy of the table takes (header + 128 entries), at each end of the disk."""


def header_crc(raw_header: bytes) -> int:
    """CRC32 of the header with its CRC field zeroed."""
    buf = bytearray(raw_header)
    buf[GPT_HEADER_CRC_AT : GPT_HEADER_CRC_AT + 4] = b"\0\0\0\0"
    return zlib.crc32(buf)


@dataclass(frozen=True, slots=True)
class _Copy:
    disk_guid: str
    partitions: list[Partition]


def _read_copy(dev: BlockDevice, lba: int, which: str) -> _Copy:
    """Parse one header (primary or backup) and its entries; CorruptImageError names what is wrong."""
    total = dev.size // SECTOR
    if not 1 <= lba < total:
        raise CorruptImageError(f"{dev.path}: {which} GPT header LBA {lba} lies outside the disk")
    sector = dev.pread(lba * SECTOR, SECTOR)
    if sector[:8] != GPT_SIGNATURE:
        raise CorruptImageError(f"{dev.path}: no {which} GPT header at LBA {lba}")
    hdr = GptHeader.parse(sector)
    if not 92 <= hdr.header_size <= SECTOR:
        raise CorruptImageError(f"{dev.path}: {which} GPT header size {hdr.header_size} is invalid")
    if header_crc(sector[: hdr.header_size]) != hdr.header_crc32:
        raise CorruptImageError(f"{dev.path}: {which} GPT header CRC32 mismatch")
    if hdr.current_lba != lba:
        raise CorruptImageError(f"{dev.path}: {which} GPT header says it lives at LBA {hdr.current_lba}, not {lba}")
    if hdr.entry_size < GPT_ENTRY_SIZE or hdr.entry_size % 8:
        raise CorruptImageError(f"{dev.path}: {which} GPT entry size {hdr.entry_size} is invalid")
    nbytes = hdr.num_entries * hdr.entry_size
    if nbytes > MAX_ENTRIES_BYTES or (hdr.entries_lba * SECTOR + nbytes) > dev.size:
        raise CorruptImageError(f"{dev.path}: {which} GPT entry array ({hdr.num_entries} entries) does not fit")
    array = dev.pread(hdr.entries_lba * SECTOR, nbytes)
    if zlib.crc32(array) != hdr.entries_crc32:
        raise CorruptImageError(f"{dev.path}: {which} GPT partition entries CRC32 mismatch")
    parts = []
    for i in range(hdr.num_entries):
        raw = array[i * hdr.entry_size : i * hdr.entry_size + GPT_ENTRY_SIZE]
        if raw[:16] == ZERO_GUID:
            continue
        e = GptEntry.parse(raw)
        if e.last_lba < e.first_lba:
            raise CorruptImageError(f"{dev.path}: GPT partition {i + 1} ends (LBA {e.last_lba}) before it starts")
        name = e.name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(
            Partition(
                number=i + 1,
                start=e.first_lba * SECTOR,
                size=(e.last_lba - e.first_lba + 1) * SECTOR,
                type=format_guid(e.type_guid),
                name=name,
                uuid=format_guid(e.unique_guid),
            )
        )
    return _Copy(format_guid(hdr.disk_guid), parts)


def read_gpt(dev: BlockDevice) -> tuple[str, list[Partition], list[str]]:
    """(disk GUID, partitions, warnings) of a GPT disk; the backup is used when the primary is bad."""
    warnings: list[str] = []
    try:
        copy = _read_copy(dev, 1, "primary")
    except CorruptImageError as primary_error:
        try:
            copy = _read_copy(dev, dev.size // SECTOR - 1, "backup")
        except CorruptImageError:
            raise primary_error from None
        warnings.append(f"{primary_error}; using the backup GPT")
    for p in copy.partitions:
        if p.end > dev.size:
            warnings.append(f"GPT partition {p.number} ends at {p.end}, past the disk end {dev.size}")
    return copy.disk_guid, copy.partitions, warnings


def usable_range(disk_size: int) -> tuple[int, int]:
    """First and last usable LBA (inclusive) of a disk with the standard 128-entry GPT."""
    total = disk_size // SECTOR
    return 2 + GPT_ENTRIES_SECTORS, total - 2 - GPT_ENTRIES_SECTORS


def build_gpt(disk_size: int, partitions: Sequence[Partition], disk_guid: str) -> list[tuple[int, bytes]]:
    """The writes that put a GPT on a disk of ``disk_size`` bytes, as (offset, bytes) pairs.

    ``partitions`` need ``type`` (GUID string) and ``uuid``; ``number`` picks the entry slot.
    Returns the protective MBR + primary header + entries (offset 0) and the backup entries +
    header at the end of the disk.
    """
    if disk_size % SECTOR:
        raise UsageError(f"disk size {disk_size} is not a multiple of {SECTOR}")
    total = disk_size // SECTOR
    first_usable, last_usable = usable_range(disk_size)
    if last_usable < first_usable:
        raise UsageError(f"a disk of {disk_size} bytes is too small for a GPT")
    array = bytearray(GPT_NUM_ENTRIES * GPT_ENTRY_SIZE)
    for p in partitions:
        if not 1 <= p.number <= GPT_NUM_ENTRIES:
            raise UsageError(f"GPT partition number {p.number} is outside 1-{GPT_NUM_ENTRIES}")
        if p.start % SECTOR or p.size % SECTOR or p.size <= 0:
            raise UsageError(f"partition {p.number}: start and size must be whole sectors")
        first, last = p.start // SECTOR, p.end // SECTOR - 1
        if first < first_usable or last > last_usable:
            raise UsageError(
                f"partition {p.number} (LBA {first}-{last}) is outside the usable LBAs {first_usable}-{last_usable}"
            )
        if p.uuid is None:
            raise UsageError(f"partition {p.number} needs a unique GUID")
        at = (p.number - 1) * GPT_ENTRY_SIZE
        if array[at : at + 16] != ZERO_GUID:
            raise UsageError(f"partition number {p.number} is given twice")
        name = p.name.encode("utf-16-le")
        if len(name) > 72:
            raise UsageError(f"partition name {p.name!r} is longer than 36 UTF-16 characters")
        array[at : at + GPT_ENTRY_SIZE] = GptEntry.build(
            dict(
                type_guid=guid_bytes(p.type),
                unique_guid=guid_bytes(p.uuid),
                first_lba=first,
                last_lba=last,
                attributes=0,
                name=name.ljust(72, b"\0"),
            )
        )
    _check_overlaps(partitions)
    entries_crc = zlib.crc32(array)

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = dict(
            signature=GPT_SIGNATURE,
            revision=GPT_REVISION,
            header_size=GptHeader.sizeof(),
            header_crc32=0,
            reserved=0,
            current_lba=current,
            backup_lba=backup,
            first_usable_lba=first_usable,
            last_usable_lba=last_usable,
            disk_guid=guid_bytes(disk_guid),
            entries_lba=entries_lba,
            num_entries=GPT_NUM_ENTRIES,
            entry_size=GPT_ENTRY_SIZE,
            entries_crc32=entries_crc,
        )
        raw = bytearray(GptHeader.build(fields))
        raw[GPT_HEADER_CRC_AT : GPT_HEADER_CRC_AT + 4] = header_crc(raw).to_bytes(4, "little")
        return bytes(raw).ljust(SECTOR, b"\0")

    protective = Partition(1, SECTOR, min(total - 1, 0xFFFFFFFF) * SECTOR, "0xee")
    mbr = build_mbr([protective], 0, protective=True)
    backup_entries_lba = total - 1 - GPT_ENTRIES_SECTORS
    head = mbr + header(1, total - 1, 2) + bytes(array)
    tail = bytes(array) + header(total - 1, 1, backup_entries_lba)
    return [(0, head), (backup_entries_lba * SECTOR, tail)]


def _check_overlaps(partitions: Sequence[Partition]) -> None:
    spans = sorted((p.start, p.end, p.number) for p in partitions)
    for (_, end, n), (start, _, m) in itertools.pairwise(spans):
        if start < end:
            raise UsageError(f"partitions {n} and {m} overlap")
