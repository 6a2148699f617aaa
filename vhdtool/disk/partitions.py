"""Reading, choosing and writing partition tables on any BlockDevice.

``read_table`` decides the scheme the way blkid does: a filesystem boot sector at LBA 0 means no
table (a superfloppy: FAT and NTFS boot sectors carry 55AA too), an MBR whose slots include the
protective type 0xEE means GPT, any other 55AA sector is an MBR. ``select`` picks the partition
``mount`` and the file commands work on; ``table_writes``/``write_table`` lay a new table down.
"""

from __future__ import annotations

from collections.abc import Sequence

from vhdtool.disk.detect import Filesystem, detect
from vhdtool.disk.gpt import build_gpt, read_gpt
from vhdtool.disk.mbr import build_mbr, check_mbr_layout, has_mbr_signature, parse_mbr, read_mbr
from vhdtool.disk.structs import MBR_TYPE_GPT_PROTECTIVE, SECTOR
from vhdtool.disk.table import Partition, PartitionTable
from vhdtool.disk.view import PartitionView
from vhdtool.errors import UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice

SCHEMES = ("gpt", "mbr", "none")


class NoFilesystemError(VhdError):
    """The chosen partition (or the whole disk) holds no filesystem vhdtool supports."""


def read_table(dev: BlockDevice) -> PartitionTable:
    """The partition table of ``dev``; scheme ``"none"`` (one whole-disk partition) when there is none."""
    if dev.size < SECTOR:
        return PartitionTable("none", dev.size, (Partition(1, 0, dev.size, "none"),))
    sector0 = dev.pread(0, SECTOR)
    if has_mbr_signature(sector0) and detect(dev) is None and _plausible_mbr(sector0):
        _, slots = parse_mbr(sector0)
        if any(t == MBR_TYPE_GPT_PROTECTIVE for t, _, _, _ in slots):
            guid, parts, warnings = read_gpt(dev)
            return PartitionTable("gpt", dev.size, tuple(parts), guid, tuple(warnings))
        disk_id, parts, warnings = read_mbr(dev, sector0)
        return PartitionTable("mbr", dev.size, tuple(parts), disk_id, tuple(warnings))
    return PartitionTable("none", dev.size, (Partition(1, 0, dev.size, "none"),))


def _plausible_mbr(sector0: bytes) -> bool:
    """Boot flags are 0x00 or 0x80 in a real MBR; boot code in a VBR rarely passes this."""
    return all(sector0[446 + 16 * i] in (0x00, 0x80) for i in range(4))


def partition_view(dev: BlockDevice, part: Partition) -> PartitionView:
    """A BlockDevice over one partition, clipped to the disk (a table may claim more than exists)."""
    if part.start >= dev.size:
        raise VhdError(f"{dev.path}: partition {part.number} starts at {part.start}, past the disk end")
    size = min(part.size, dev.size - part.start)
    return PartitionView(dev, part.start, size, name=f"{dev.path} partition {part.number}")


def select(dev: BlockDevice, table: PartitionTable, number: int | None = None) -> tuple[Partition, Filesystem]:
    """The partition to work on and its filesystem: ``number`` if given, else the first partition
    that holds a supported filesystem (extended partitions and empty slots are skipped)."""
    if number is not None:
        part = table.get(number)
        if part is None:
            have = ", ".join(str(p.number) for p in table.partitions) or "none"
            raise UsageError(f"{dev.path}: no partition {number} (partitions: {have})")
        fs = detect(partition_view(dev, part))
        if fs is None:
            raise NoFilesystemError(
                f"{dev.path}: partition {number} holds no supported filesystem (ext2/3/4, FAT, NTFS)"
            )
        return part, fs
    for part in table.partitions:
        if part.start >= dev.size:
            continue
        fs = detect(partition_view(dev, part))
        if fs is not None:
            return part, fs
    where = "the disk" if table.scheme == "none" else f"any of its {len(table.partitions)} partitions"
    raise NoFilesystemError(f"{dev.path}: no supported filesystem (ext2/3/4, FAT, NTFS) on {where}")


def table_writes(scheme: str, disk_size: int, partitions: Sequence[Partition], disk_id: str) -> list[tuple[int, bytes]]:
    """The (offset, bytes) writes that lay a ``scheme`` table on a disk of ``disk_size`` bytes.

    ``disk_id`` is the GPT disk GUID, or 8 hex digits of MBR disk signature. Nothing outside the
    table sectors is touched: the rest of the disk keeps its contents.
    """
    if scheme == "gpt":
        return build_gpt(disk_size, partitions, disk_id)
    if scheme == "mbr":
        check_mbr_layout(partitions, disk_size)
        return [(0, build_mbr(partitions, int(disk_id, 16)))]
    if scheme == "none":
        return []
    raise UsageError(f"unknown partition table {scheme!r} (use one of {', '.join(SCHEMES)})")


def write_table(dev: BlockDevice, scheme: str, partitions: Sequence[Partition], disk_id: str) -> None:
    """Write a new partition table onto ``dev`` (which must be writable) and flush."""
    for offset, data in table_writes(scheme, dev.size, partitions, disk_id):
        dev.pwrite(offset, data)
    dev.flush()
