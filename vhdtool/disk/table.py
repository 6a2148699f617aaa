"""What a partition table says, independent of its scheme: the types read_table() returns.

A ``PartitionTable`` with scheme ``"none"`` stands for a disk without a table (a "superfloppy"):
the whole disk is one volume, reported as partition 1 so callers need no special case.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

MiB = 1 << 20

GPT_TYPES: dict[str, str] = {
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
}
GPT_LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_MS_BASIC_DATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"

MBR_TYPES: dict[int, str] = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 Ext'd (LBA)",
    0x82: "Linux swap",
    0x83: "Linux",
    0x85: "Linux extended",
    0x8E: "Linux LVM",
    0xEE: "GPT",
    0xEF: "EFI (FAT-12/16/32)",
}


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition. Offsets in bytes from the start of the disk; ``number`` counts from 1.

    ``type`` is a GPT type GUID (lower-case string) or an MBR type byte as ``"0x83"``.
    """

    number: int
    start: int
    size: int
    type: str
    name: str = ""
    """GPT partition name (empty on MBR)."""
    uuid: str | None = None
    """GPT unique partition GUID (None on MBR)."""
    bootable: bool = False
    """MBR active flag (always False on GPT)."""

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def type_name(self) -> str:
        if self.type.startswith("0x"):
            return MBR_TYPES.get(int(self.type, 16), "unknown")
        return GPT_TYPES.get(self.type, "unknown")


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """A disk's partition table: scheme ``"gpt"``, ``"mbr"`` or ``"none"`` (whole-disk volume)."""

    scheme: str
    disk_size: int
    partitions: tuple[Partition, ...]
    disk_id: str | None = None
    """GPT disk GUID, or the MBR disk signature as 8 hex digits."""
    warnings: tuple[str, ...] = field(default=())
    """Problems that did not stop the read (a damaged primary GPT read from its backup, ...)."""

    def get(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


def format_guid(raw: bytes) -> str:
    """A GPT on-disk (mixed-endian) GUID as the usual lower-case string."""
    return str(uuid.UUID(bytes_le=raw))


def guid_bytes(text: str) -> bytes:
    """The mixed-endian on-disk bytes of a GUID string."""
    return uuid.UUID(text).bytes_le
