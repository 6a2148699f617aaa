"""On-disk layouts of what sits inside a virtual disk: MBR, GPT, and filesystem superblocks.

Declarations only: no I/O, no policy. MBR and GPT integers are little-endian (UEFI 2.10 §5);
GUIDs are stored "mixed-endian" (``uuid.UUID(bytes_le=...)``). Only the superblock fields that
filesystem detection needs are declared; the rest is ``Padding``.
"""

from __future__ import annotations

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct

from vhdtool.format.rules import SECTOR as SECTOR  # re-exported for the partition-table modules

# --- MBR -----------------------------------------------------------------------------------------

MbrEntry = Struct(
    "status" / Int8ul,  # 0x80 = bootable
    "chs_first" / Bytes(3),
    "type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "sectors" / Int32ul,
)
assert MbrEntry.sizeof() == 16

Mbr = Struct(
    "boot_code" / Bytes(440),
    "disk_signature" / Int32ul,
    "reserved" / Int16ul,
    "entries" / MbrEntry[4],
    "signature" / Bytes(2),  # 55 AA
)
assert Mbr.sizeof() == SECTOR
MBR_SIGNATURE = b"\x55\xaa"

MBR_TYPE_EMPTY = 0x00
MBR_TYPE_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
"""Extended partitions: their first sector holds an EBR chaining the logical partitions."""

# --- GPT -----------------------------------------------------------------------------------------

GptHeader = Struct(
    "signature" / Bytes(8),  # "EFI PART"
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,
    "reserved" / Int32ul,
    "current_lba" / Int64ul,
    "backup_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "entries_lba" / Int64ul,
    "num_entries" / Int32ul,
    "entry_size" / Int32ul,
    "entries_crc32" / Int32ul,
)
assert GptHeader.sizeof() == 92
GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_CRC_AT = 16
GPT_ENTRY_SIZE = 128
GPT_NUM_ENTRIES = 128
GPT_ENTRIES_SECTORS = GPT_NUM_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32

GptEntry = Struct(
    "type_guid" / Bytes(16),
    "unique_guid" / Bytes(16),
    "first_lba" / Int64ul,
    "last_lba" / Int64ul,  # inclusive
    "attributes" / Int64ul,
    "name" / Bytes(72),  # UTF-16LE, NUL padded
)
assert GptEntry.sizeof() == GPT_ENTRY_SIZE

# --- filesystem superblocks (only the fields detection reads) ------------------------------------

EXT_SUPERBLOCK_AT = 1024
ExtSuperblock = Struct(
    "inodes_count" / Int32ul,
    "blocks_count_lo" / Int32ul,
    Padding(16),
    "log_block_size" / Int32ul,
    Padding(28),
    "magic" / Int16ul,  # at 56: 0xEF53
    Padding(34),
    "feature_compat" / Int32ul,  # at 92
    "feature_incompat" / Int32ul,
    "feature_ro_compat" / Int32ul,
    "uuid" / Bytes(16),  # at 104
    "volume_name" / Bytes(16),  # at 120
    Padding(200),
    "blocks_count_hi" / Int32ul,  # at 336
)
assert ExtSuperblock.sizeof() == 340
EXT_MAGIC = 0xEF53

FatBootSector = Struct(
    "jump" / Bytes(3),
    "oem_name" / Bytes(8),
    "bytes_per_sector" / Int16ul,  # at 11
    "sectors_per_cluster" / Int8ul,
    "reserved_sectors" / Int16ul,
    "num_fats" / Int8ul,
    "root_entries" / Int16ul,  # 0 on FAT32
    "total_sectors_16" / Int16ul,
    "media" / Int8ul,
    "fat_size_16" / Int16ul,  # 0 on FAT32
    "sectors_per_track" / Int16ul,
    "heads" / Int16ul,
    "hidden_sectors" / Int32ul,
    "total_sectors_32" / Int32ul,  # at 32
    # FAT12/16 extended BPB starts here (offset 36); FAT32 has its own (fields below).
    "fat_size_32" / Int32ul,  # at 36 (FAT32 only)
    Padding(2 + 2 + 4 + 2 + 2 + 12),
    "drive_number_32" / Int8ul,  # at 64
    Padding(1),
    "boot_sig_32" / Int8ul,  # at 66: 0x29 when the next three are valid
    "volume_id_32" / Int32ul,  # at 67
    "volume_label_32" / Bytes(11),  # at 71
    "fs_type_32" / Bytes(8),  # at 82
)
assert FatBootSector.sizeof() == 90
# FAT12/16 keep the same three fields at 38 (boot signature), 39 (volume id), 43 (label).
FAT16_BOOT_SIG_AT = 38

NTFS_OEM = b"NTFS    "
NtfsBootSector = Struct(
    "jump" / Bytes(3),
    "oem_id" / Bytes(8),  # "NTFS    "
    "bytes_per_sector" / Int16ul,
    "sectors_per_cluster" / Int8ul,
    Padding(26),
    "total_sectors" / Int64ul,  # at 40
    Padding(24),
    "serial" / Int64ul,  # at 72
)
assert NtfsBootSector.sizeof() == 80
