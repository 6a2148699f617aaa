"""Filesystem detection by superblock, as blkid does it: ext2/3/4, FAT12/16/32, NTFS.

Pure functions of the first sectors of a volume (``probe``) plus one reader (``detect``). The
ext2/ext3/ext4 split follows blkid: a journal makes ext3, any feature ext3 lacks makes ext4.
The FAT width comes from the cluster count (Microsoft's FAT spec), not the label in the boot
sector, which is informational only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from vhdtool.disk.structs import (
    EXT_MAGIC,
    EXT_SUPERBLOCK_AT,
    FAT16_BOOT_SIG_AT,
    NTFS_OEM,
    ExtSuperblock,
    FatBootSector,
    NtfsBootSector,
)
from vhdtool.format.blockdev import BlockDevice

PROBE_BYTES = 4096
"""Every supported superblock lies in the first 4 KiB of its volume."""

EXT3_COMPAT_JOURNAL = 0x4
EXT3_INCOMPAT_SUPPORTED = 0x2 | 0x4 | 0x10  # filetype, recover, meta_bg
EXT3_RO_COMPAT_SUPPORTED = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir
EXT_INCOMPAT_JOURNAL_DEV = 0x8

FS_EXT = ("ext2", "ext3", "ext4")
FS_FAT = "vfat"
FS_NTFS = "ntfs"


@dataclass(frozen=True, slots=True)
class Filesystem:
    """What a volume holds. ``type`` is the mount type (ext2/ext3/ext4/vfat/ntfs);
    ``variant`` says more where it matters (fat12/fat16/fat32)."""

    type: str
    variant: str
    label: str
    uuid: str
    size: int
    """Bytes the filesystem says it spans."""


def probe(head: bytes, volume_size: int) -> Filesystem | None:
    """The filesystem whose superblock is in ``head`` (the first ``PROBE_BYTES`` of a volume), or None."""
    if len(head) < PROBE_BYTES:
        head = head.ljust(PROBE_BYTES, b"\0")
    return _probe_ext(head) or _probe_ntfs(head) or _probe_fat(head, volume_size)


def detect(dev: BlockDevice) -> Filesystem | None:
    """Read the start of ``dev`` (a whole disk or a partition view) and probe it."""
    n = min(PROBE_BYTES, dev.size)
    return probe(dev.pread(0, n), dev.size) if n else None


def _probe_ext(head: bytes) -> Filesystem | None:
    sb = ExtSuperblock.parse(head[EXT_SUPERBLOCK_AT:])
    if sb.magic != EXT_MAGIC or sb.log_block_size > 6:
        return None
    if sb.feature_incompat & EXT_INCOMPAT_JOURNAL_DEV:
        return None  # an external journal device holds no files
    if sb.feature_incompat & ~EXT3_INCOMPAT_SUPPORTED or sb.feature_ro_compat & ~EXT3_RO_COMPAT_SUPPORTED:
        kind = "ext4"
    elif sb.feature_compat & EXT3_COMPAT_JOURNAL:
        kind = "ext3"
    else:
        kind = "ext2"
    blocks = sb.blocks_count_lo | ((sb.blocks_count_hi << 32) if sb.feature_incompat & 0x80 else 0)
    return Filesystem(
        type=kind,
        variant=kind,
        label=sb.volume_name.split(b"\0", 1)[0].decode("utf-8", errors="replace"),
        uuid=str(uuid.UUID(bytes=sb.uuid)),
        size=blocks * (1024 << sb.log_block_size),
    )


def _probe_ntfs(head: bytes) -> Filesystem | None:
    bs = NtfsBootSector.parse(head)
    if bs.oem_id != NTFS_OEM or head[510:512] != b"\x55\xaa":
        return None
    if bs.bytes_per_sector not in (512, 1024, 2048, 4096):
        return None
    return Filesystem(
        type=FS_NTFS,
        variant=FS_NTFS,
        label="",  # the label lives in the $Volume file, not the boot sector
        uuid=f"{bs.serial:016X}",
        size=(bs.total_sectors + 1) * bs.bytes_per_sector,  # +1: the backup boot sector
    )


def _probe_fat(head: bytes, volume_size: int) -> Filesystem | None:
    if head[510:512] != b"\x55\xaa" or head[0] not in (0xEB, 0xE9):
        return None
    bs = FatBootSector.parse(head)
    bps, spc = bs.bytes_per_sector, bs.sectors_per_cluster
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        return None
    if bs.reserved_sectors == 0 or bs.num_fats == 0 or (bs.media < 0xF0 and bs.media != 0):
        return None
    fat_size = bs.fat_size_16 or bs.fat_size_32
    total = bs.total_sectors_16 or bs.total_sectors_32
    if fat_size == 0 or total == 0:
        return None
    root_sectors = (bs.root_entries * 32 + bps - 1) // bps
    data_sectors = total - (bs.reserved_sectors + bs.num_fats * fat_size + root_sectors)
    if data_sectors <= 0:
        return None
    clusters = data_sectors // spc
    if clusters < 4085:
        variant = "fat12"
    elif clusters < 65525:
        variant = "fat16"
    else:
        variant = "fat32"
    if variant == "fat32" and bs.fat_size_16 == 0:
        sig_at, volid, label = 66, bs.volume_id_32, bs.volume_label_32
    else:
        sig_at = FAT16_BOOT_SIG_AT
        volid = int.from_bytes(head[39:43], "little")
        label = head[43:54]
    if head[sig_at] not in (0x28, 0x29):
        volid, label = 0, b""
    label_text = label.decode("cp850", errors="replace").rstrip()
    return Filesystem(
        type=FS_FAT,
        variant=variant,
        label="" if label_text == "NO NAME" else label_text,
        uuid=f"{volid >> 16:04X}-{volid & 0xFFFF:04X}",
        size=min(total * bps, volume_size) if volume_size else total * bps,
    )
