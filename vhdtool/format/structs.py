"""On-disk layouts of the VHD format (Microsoft "Virtual Hard Disk Image Format Specification" 1.0).

Declarations only: no file handles, no policy. Field names follow the specification. All
integers are big-endian. The checksum of the footer (byte 64) and of the dynamic header
(byte 36) is the one's complement of the byte sum of the structure with the field zeroed;
``parse_*`` report whether it matches, ``build_*`` fill it in.
"""

from __future__ import annotations

from typing import Any

from construct import Bytes, Container, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from vhdtool.format.rules import SECTOR as SECTOR  # re-exported: many layout modules import it from here

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FOOTER_SIZE = 512
HEADER_SIZE = 1024
UNALLOCATED = 0xFFFFFFFF
"""A BAT entry with this value has no block in the file."""
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
"""Data Offset of a fixed disk's footer, and of the dynamic header (reserved)."""

DISK_TYPE_FIXED = 2
DISK_TYPE_DYNAMIC = 3
DISK_TYPE_DIFFERENCING = 4
DISK_TYPE_NAMES = {DISK_TYPE_FIXED: "fixed", DISK_TYPE_DYNAMIC: "dynamic", DISK_TYPE_DIFFERENCING: "differencing"}

FEATURE_TEMPORARY = 0x1
FEATURE_RESERVED = 0x2
"""The specification requires this bit to be set in every footer."""

Footer = Struct(
    "cookie" / Bytes(8),
    "features" / Int32ub,
    "file_format_version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_application" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_host_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    Padding(427),  # reserved, zero
)
assert Footer.sizeof() == FOOTER_SIZE
FOOTER_CHECKSUM_AT = 64

ParentLocatorEntry = Struct(
    "platform_code" / Bytes(4),
    "platform_data_space" / Int32ub,
    "platform_data_length" / Int32ub,
    "reserved" / Int32ub,
    "platform_data_offset" / Int64ub,
)
assert ParentLocatorEntry.sizeof() == 24
LOCATOR_SLOTS = 8
EMPTY_LOCATOR_ENTRY = {
    "platform_code": bytes(4),
    "platform_data_space": 0,
    "platform_data_length": 0,
    "reserved": 0,
    "platform_data_offset": 0,
}
"""The fields of an unused locator slot (all zero)."""

DynamicHeader = Struct(
    "cookie" / Bytes(8),
    "data_offset" / Int64ub,
    "table_offset" / Int64ub,
    "header_version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / Int32ub,
    "parent_unique_id" / Bytes(16),
    "parent_timestamp" / Int32ub,
    "reserved1" / Int32ub,
    "parent_unicode_name" / Bytes(512),  # UTF-16 big-endian, NUL padded
    "parent_locators" / ParentLocatorEntry[LOCATOR_SLOTS],
    Padding(256),  # reserved, zero
)
assert DynamicHeader.sizeof() == HEADER_SIZE
HEADER_CHECKSUM_AT = 36


def vhd_checksum(raw: bytes | bytearray, field_at: int) -> int:
    """One's complement of the byte sum of ``raw`` with the 4-byte checksum field at ``field_at`` zeroed."""
    total = sum(raw) - sum(raw[field_at : field_at + 4])
    return (~total) & 0xFFFFFFFF


def _parse_checked(struct: Struct, raw: bytes, checksum_at: int) -> tuple[Container, bool]:
    fields = struct.parse(raw)
    return fields, fields.checksum == vhd_checksum(raw, checksum_at)


def _build_checked(struct: Struct, fields: dict[str, Any] | Container, checksum_at: int) -> bytes:
    raw = bytearray(struct.build({**fields, "checksum": 0}))
    raw[checksum_at : checksum_at + 4] = vhd_checksum(raw, checksum_at).to_bytes(4, "big")
    return bytes(raw)


def parse_footer(raw: bytes) -> tuple[Container, bool]:
    """Parse 512 footer bytes; return the fields and whether the checksum matches."""
    return _parse_checked(Footer, raw, FOOTER_CHECKSUM_AT)


def build_footer(fields: dict[str, Any] | Container) -> bytes:
    """Build 512 footer bytes with a correct checksum."""
    return _build_checked(Footer, fields, FOOTER_CHECKSUM_AT)


def parse_header(raw: bytes) -> tuple[Container, bool]:
    """Parse 1024 dynamic-header bytes; return the fields and whether the checksum matches."""
    return _parse_checked(DynamicHeader, raw, HEADER_CHECKSUM_AT)


def build_header(fields: dict[str, Any] | Container) -> bytes:
    """Build 1024 dynamic-header bytes with a correct checksum."""
    return _build_checked(DynamicHeader, fields, HEADER_CHECKSUM_AT)
