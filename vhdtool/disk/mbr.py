"""MBR partition tables: read (primary and logical partitions) and write (primary partitions).

Logical partitions follow the EBR chain of the first extended partition and are numbered from 5,
as Linux and sfdisk number them. Writing covers the primary table only, which is all ``build``
needs. CHS fields are written as the "LBA only" marker (0xFE 0xFF 0xFF) beyond 1024 cylinders,
as sfdisk and parted do; every reader since the 90s uses the LBA fields.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from vhdtool.disk.structs import MBR_EXTENDED_TYPES, MBR_SIGNATURE, MBR_TYPE_EMPTY, SECTOR, Mbr
from vhdtool.disk.table import Partition
from vhdtool.errors import UsageError
from vhdtool.format.blockdev import BlockDevice

MAX_LOGICAL = 128
"""Stop following an EBR chain after this many links: a looped chain must not hang us."""
MAX_MBR_SECTORS = 0xFFFFFFFF

_HEADS, _SECTORS_PER_TRACK = 255, 63


def has_mbr_signature(sector0: bytes) -> bool:
    return len(sector0) >= SECTOR and sector0[510:512] == MBR_SIGNATURE


def parse_mbr(sector0: bytes) -> tuple[int, list[tuple[int, int, int, bool]]]:
    """Disk signature and the four primary slots as (type, lba_first, sectors, bootable), empty ones dropped."""
    mbr = Mbr.parse(sector0[:SECTOR])
    slots = []
    for e in mbr.entries:
        if e.type == MBR_TYPE_EMPTY or e.sectors == 0:
            slots.append((MBR_TYPE_EMPTY, 0, 0, False))
        else:
            slots.append((e.type, e.lba_first, e.sectors, e.status == 0x80))
    return mbr.disk_signature, slots


def read_mbr(dev: BlockDevice, sector0: bytes | None = None) -> tuple[str, list[Partition], list[str]]:
    """Partitions of an MBR disk: (disk id, partitions, warnings). Raises CorruptImageError when unusable."""
    sector0 = dev.pread(0, SECTOR) if sector0 is None else sector0
    signature, slots = parse_mbr(sector0)
    warnings: list[str] = []
    parts: list[Partition] = []
    extended: tuple[int, int] | None = None
    for i, (ptype, lba, sectors, boot) in enumerate(slots, start=1):
        if ptype == MBR_TYPE_EMPTY:
            continue
        start, size = lba * SECTOR, sectors * SECTOR
        if start + size > dev.size:
            warnings.append(f"partition {i} ends at {start + size}, past the disk end {dev.size}")
        parts.append(Partition(i, start, size, f"0x{ptype:02x}", bootable=boot))
        if ptype in MBR_EXTENDED_TYPES and extended is None:
            extended = (lba, sectors)
    if extended is not None:
        parts.extend(_read_logical(dev, extended[0], extended[1], warnings))
    return f"{signature:08x}", parts, warnings


def _read_logical(dev: BlockDevice, ext_lba: int, ext_sectors: int, warnings: list[str]) -> list[Partition]:
    """Walk the EBR chain: each EBR holds one logical partition (relative to the EBR) and a link
    to the next EBR (relative to the start of the extended partition)."""
    parts: list[Partition] = []
    ebr_lba = ext_lba
    seen: set[int] = set()
    number = 5
    while len(parts) < MAX_LOGICAL:
        if ebr_lba in seen or not ext_lba <= ebr_lba < ext_lba + ext_sectors:
            warnings.append(f"EBR chain leaves the extended partition or loops at sector {ebr_lba}")
            break
        seen.add(ebr_lba)
        if (ebr_lba + 1) * SECTOR > dev.size:
            warnings.append(f"EBR at sector {ebr_lba} lies past the disk end")
            break
        raw = dev.pread(ebr_lba * SECTOR, SECTOR)
        if not has_mbr_signature(raw):
            warnings.append(f"EBR at sector {ebr_lba} has no 55AA signature")
            break
        _, slots = parse_mbr(raw)
        ptype, lba, sectors, boot = slots[0]
        if ptype != MBR_TYPE_EMPTY:
            parts.append(Partition(number, (ebr_lba + lba) * SECTOR, sectors * SECTOR, f"0x{ptype:02x}", bootable=boot))
            number += 1
        link_type, link_lba, _, _ = slots[1]
        if link_type not in MBR_EXTENDED_TYPES:
            break
        ebr_lba = ext_lba + link_lba
    return parts


def _chs(lba: int) -> bytes:
    """CHS address of an LBA in the 255-head/63-sector translation; past cylinder 1023 the max marker."""
    cylinder, rest = divmod(lba, _HEADS * _SECTORS_PER_TRACK)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, _SECTORS_PER_TRACK)
    sector += 1
    return bytes((head, ((cylinder >> 2) & 0xC0) | sector, cylinder & 0xFF))


def build_mbr(
    partitions: Sequence[Partition], disk_signature: int, boot_code: bytes = b"", *, protective: bool = False
) -> bytes:
    """512 bytes of MBR holding up to four primary ``partitions`` (their ``number`` picks the slot).

    ``type`` must be an MBR type (``"0x83"``). Sizes and starts must be whole sectors below 2 TiB.
    """
    if len(partitions) > 4:
        raise UsageError(f"an MBR holds at most 4 primary partitions, not {len(partitions)}")
    entries = [
        dict(status=0, chs_first=b"\0\0\0", type=0, chs_last=b"\0\0\0", lba_first=0, sectors=0) for _ in range(4)
    ]
    for p in partitions:
        if not p.type.startswith("0x"):
            raise UsageError(f"partition {p.number}: {p.type} is not an MBR type byte")
        if p.start % SECTOR or p.size % SECTOR or p.size <= 0:
            raise UsageError(f"partition {p.number}: start and size must be whole sectors")
        first, count = p.start // SECTOR, p.size // SECTOR
        if not protective and (first + count > MAX_MBR_SECTORS + 1):
            raise UsageError(f"partition {p.number} ends past 2 TiB, beyond what an MBR can address (use GPT)")
        if not 1 <= p.number <= 4 or entries[p.number - 1]["sectors"]:
            raise UsageError(f"partition number {p.number} is not a free primary slot (1-4)")
        entries[p.number - 1] = dict(
            status=0x80 if p.bootable else 0,
            chs_first=_chs(first),
            type=int(p.type, 16),
            chs_last=_chs(first + count - 1),
            lba_first=first,
            sectors=min(count, MAX_MBR_SECTORS),
        )
    return Mbr.build(
        dict(
            boot_code=boot_code[:440].ljust(440, b"\0"),
            disk_signature=disk_signature & 0xFFFFFFFF,
            reserved=0,
            entries=entries,
            signature=MBR_SIGNATURE,
        )
    )


def check_mbr_layout(partitions: Sequence[Partition], disk_size: int) -> None:
    """Refuse overlapping partitions or partitions past the disk end."""
    spans = sorted((p.start, p.end, p.number) for p in partitions)
    for (_, end, n), (start, _, m) in itertools.pairwise(spans):
        if start < end:
            raise UsageError(f"partitions {n} and {m} overlap")
    for p in partitions:
        if p.start < SECTOR or p.end > disk_size:
            raise UsageError(f"partition {p.number} [{p.start}, {p.end}) does not fit the disk of {disk_size} bytes")
