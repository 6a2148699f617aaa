"""The pure format rules, table-driven."""

from __future__ import annotations

import pytest

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.rules import Geometry, GiB, KiB, MiB
from vhdtool.format.structs import (
    EMPTY_LOCATOR_ENTRY,
    Footer,
    build_footer,
    build_header,
    parse_footer,
    parse_header,
    vhd_checksum,
)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # qemu-img create -f vpc rounds up to these; the spec algorithm maps them back exactly
        (67125248, Geometry(964, 8, 17)),
        (8389584 * 512, Geometry(8323, 16, 63)),
        (127 * GiB, Geometry(65278, 16, 255)),
        (2040 * GiB, Geometry(65535, 16, 255)),  # capped at the maximum
        (20 * MiB, Geometry(602, 4, 17)),  # rounds down
        (20994048, Geometry(603, 4, 17)),  # what qemu-img create 20M writes
    ],
)
def test_chs_geometry(size: int, expected: Geometry) -> None:
    assert rules.chs_geometry(size) == expected


@pytest.mark.parametrize("size", [67125248, 8389584 * 512, 1000001536, 127 * GiB, 4 * GiB, 3 * 512])
def test_new_image_geometry_is_exact_or_maximum(size: int) -> None:
    g = rules.geometry_for_new_image(size)
    assert g.size == size or g.is_maximum


@pytest.mark.parametrize(
    ("creator", "geometry", "expected"),
    [
        (b"vpc ", Geometry(1937, 16, 63), 999677952),
        (b"qemu", Geometry(1937, 16, 63), 999677952),
        (b"vbox", Geometry(1937, 16, 63), 999677952),
        (b"vhdt", Geometry(1937, 16, 63), 999677952),
        (b"win ", Geometry(1937, 16, 63), 1000001536),
        (b"qem2", Geometry(1937, 16, 63), 1000001536),
        (b"d2v ", Geometry(1937, 16, 63), 1000001536),
        (b"tap\0", Geometry(1937, 16, 63), 1000001536),
        (b"CTXS", Geometry(1937, 16, 63), 1000001536),
        (b"vpc ", Geometry(65535, 16, 255), 1000001536),
    ],
)
def test_qemu72_size_rule(creator: bytes, geometry: Geometry, expected: int) -> None:
    assert rules.qemu72_virtual_size(creator, geometry, 1000001536) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127G", ("", 127 * GiB)),
        ("512M", ("", 512 * MiB)),
        ("2T", ("", 2 << 40)),
        ("1048576", ("", 1048576)),
        ("+1G", ("+", GiB)),
        ("-512K", ("-", 512 * KiB)),
        ("1.5G", ("", 3 * GiB // 2)),
        ("64MiB", ("", 64 * MiB)),
    ],
)
def test_parse_size(text: str, expected: tuple[str, int]) -> None:
    assert rules.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12X", "1.0000001K", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        rules.parse_size(text)


@pytest.mark.parametrize(
    ("size", "kind"), [(0, "dynamic"), (1000, "dynamic"), (2041 * GiB, "dynamic"), (2041 * GiB, "fixed")]
)
def test_validate_virtual_size_rejects(size: int, kind: str) -> None:
    with pytest.raises(UsageError):
        rules.validate_virtual_size(size, kind)


@pytest.mark.parametrize("bs", [0, 3 * MiB, 1000, 256 * KiB, 512 * MiB])
def test_validate_block_size_rejects(bs: int) -> None:
    with pytest.raises(UsageError):
        rules.validate_block_size(bs)


def test_bitmap_bytes() -> None:
    assert rules.bitmap_bytes(2 * MiB) == 512
    assert rules.bitmap_bytes(512 * KiB) == 512
    assert rules.bitmap_bytes(32 * MiB) == 8192


def test_timestamps_count_from_2000() -> None:
    assert rules.to_vhd_timestamp(946684800) == 0
    assert rules.from_vhd_timestamp(1) == 946684801


def test_footer_roundtrip_and_checksum() -> None:
    assert Footer.sizeof() == 512
    fields = {
        "cookie": b"conectix",
        "features": 2,
        "file_format_version": 0x10000,
        "data_offset": 512,
        "timestamp": 12345,
        "creator_application": b"vhdt",
        "creator_version": 0x10000,
        "creator_host_os": b"Wi2k",
        "original_size": 1 << 30,
        "current_size": 1 << 30,
        "cylinders": 2080,
        "heads": 16,
        "sectors_per_track": 63,
        "disk_type": 3,
        "unique_id": bytes(range(16)),
        "saved_state": 0,
    }
    raw = build_footer(fields)
    parsed, ok = parse_footer(raw)
    assert ok and parsed.current_size == 1 << 30 and parsed.unique_id == bytes(range(16))
    assert parsed.checksum == vhd_checksum(raw, 64)
    damaged = bytearray(raw)
    damaged[100] ^= 1
    assert not parse_footer(bytes(damaged))[1]


def test_header_roundtrip() -> None:
    raw = build_header(
        {
            "cookie": b"cxsparse",
            "data_offset": (1 << 64) - 1,
            "table_offset": 1536,
            "header_version": 0x10000,
            "max_table_entries": 64,
            "block_size": 2 * MiB,
            "parent_unique_id": bytes(16),
            "parent_timestamp": 0,
            "reserved1": 0,
            "parent_unicode_name": bytes(512),
            "parent_locators": [EMPTY_LOCATOR_ENTRY] * 8,
        }
    )
    assert len(raw) == 1024
    header, ok = parse_header(raw)
    assert ok and header.block_size == 2 * MiB and header.max_table_entries == 64
