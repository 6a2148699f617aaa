"""Builds VHDs laid out the way other tools lay them out, byte by byte from the specification,
for the layouts the peers here cannot produce (Windows 10, Disk2vhd, Virtual PC locators).

Independent of vhdtool's writer on purpose: only the structure declarations are shared.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vhdtool.format.structs import EMPTY_LOCATOR_ENTRY, build_footer, build_header

SECTOR = 512


@dataclass
class Layout:
    size: int
    block_size: int = 2 << 20
    creator: bytes = b"win "
    disk_type: int = 3
    locator_area: int = 0x1000  # Windows 10: locators at 0x1000, BAT at 0x2000
    bat_offset: int = 0x2000
    align: int = 4096  # block data aligned to this
    bitmap_fill: int = 0xFF  # 0xFF as Windows and qemu; Disk2vhd leaves bits clear
    parent_uuid: bytes = bytes(16)
    parent_name: str = ""
    locators: list[tuple[int, bytes, bytes, int]] = field(default_factory=list)
    """(slot, code, data, data_space_field) for differencing images."""
    geometry: tuple[int, int, int] = (65535, 16, 255)


def build(path: Path, layout: Layout, blocks: dict[int, bytes], bitmaps: dict[int, bytes] | None = None) -> None:
    """Write an image whose block N holds blocks[N] (block_size bytes) with the given bitmaps."""
    bitmaps = bitmaps or {}
    entries = -(-layout.size // layout.block_size)
    bitmap_size = -(-(layout.block_size // SECTOR) // 8 // SECTOR) * SECTOR or SECTOR
    uid = uuid.uuid4().bytes
    footer = build_footer(
        {
            "cookie": b"conectix",
            "features": 2,
            "file_format_version": 0x10000,
            "data_offset": 512,
            "timestamp": 100,
            "creator_application": layout.creator,
            "creator_version": 0x000A0000,
            "creator_host_os": b"Wi2k",
            "original_size": layout.size,
            "current_size": layout.size,
            "cylinders": layout.geometry[0],
            "heads": layout.geometry[1],
            "sectors_per_track": layout.geometry[2],
            "disk_type": layout.disk_type,
            "unique_id": uid,
            "saved_state": 0,
        }
    )
    loc_entries = []
    area = bytearray()
    for slot, code, data, space_field in layout.locators:
        offset = layout.locator_area + len(area)
        loc_entries.append(
            (
                slot,
                {
                    "platform_code": code,
                    "platform_data_space": space_field,
                    "platform_data_length": len(data),
                    "reserved": 0,
                    "platform_data_offset": offset,
                },
            )
        )
        area += data + bytes(-len(data) % SECTOR)
    slots = [EMPTY_LOCATOR_ENTRY] * 8
    for slot, entry in loc_entries:
        slots[slot] = entry
    name = layout.parent_name.encode("utf-16-be")
    header = build_header(
        {
            "cookie": b"cxsparse",
            "data_offset": (1 << 64) - 1,
            "table_offset": layout.bat_offset,
            "header_version": 0x10000,
            "max_table_entries": entries,
            "block_size": layout.block_size,
            "parent_unique_id": layout.parent_uuid,
            "parent_timestamp": 0,
            "reserved1": 0,
            "parent_unicode_name": name + bytes(512 - len(name)),
            "parent_locators": slots,
        }
    )
    bat = [0xFFFFFFFF] * entries
    pos = layout.bat_offset + -(-entries * 4 // SECTOR) * SECTOR
    placed = []
    for index in sorted(blocks):
        data_at = -(-(pos + bitmap_size) // layout.align) * layout.align  # data aligned, bitmap just before
        start = data_at - bitmap_size
        bat[index] = start // SECTOR
        placed.append((start, index))
        pos = data_at + layout.block_size
    with open(path, "wb") as f:
        f.write(footer)
        f.seek(512)
        f.write(header)
        if area:
            f.seek(layout.locator_area)
            f.write(area)
        f.seek(layout.bat_offset)
        f.write(b"".join(e.to_bytes(4, "big") for e in bat))
        for start, index in placed:
            f.seek(start)
            default = bytes([layout.bitmap_fill]) * (layout.block_size // SECTOR // 8)
            f.write(bitmaps.get(index, default).ljust(bitmap_size, b"\0"))
            f.write(blocks[index])
        f.seek(pos)
        f.write(footer)
    os.sync()


def footer_uuid(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-512, 2)
        return f.read(512)[68:84]
