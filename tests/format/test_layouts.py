"""Layouts from other tools, built from the specification: Windows 10 (locators at 0x1000, BAT at
0x2000, 4 KiB-aligned data), Disk2vhd (clear bitmap bits on allocated blocks), Virtual PC
(locators in slots 4-7, data space in sectors), and every locator encoding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, qemu_raw, run
from tests.helpers import vhdtool as cli
from tests.imagefactory import Layout, build, footer_uuid

MiB = 1 << 20


def _blocks(seed: int, indexes: list[int], block_size: int = 2 * MiB) -> dict[int, bytes]:
    return {i: bytes([(seed + i) % 255 + 1]) * block_size for i in indexes}


def test_windows10_layout(tmp_path: Path) -> None:
    img = tmp_path / "win10.vhd"
    blocks = _blocks(3, [0, 2, 5])
    build(img, Layout(size=16 * MiB), blocks)
    expected = bytearray(16 * MiB)
    for i, data in blocks.items():
        expected[i * 2 * MiB : (i + 1) * 2 * MiB] = data
    with vhdtool.open(img) as image:
        assert image.pread(0, image.size) == expected
    assert qemu_raw(img, tmp_path) == expected  # qemu agrees on the reference image
    assert cli("check", img).returncode == 0


def test_windows10_layout_writes_stay_readable_by_qemu(tmp_path: Path) -> None:
    img = tmp_path / "win10.vhd"
    build(img, Layout(size=16 * MiB), _blocks(1, [1]))
    with vhdtool.open(img, writable=True) as image:
        image.pwrite(7 * MiB + 100, b"new" * 1000)
        expected = image.pread(0, image.size)
    assert qemu_raw(img, tmp_path) == expected
    assert cli("check", img).returncode == 0


def test_disk2vhd_partial_bitmaps(tmp_path: Path) -> None:
    img = tmp_path / "d2v.vhd"
    bitmap = bytearray(512)
    bitmap[0] = 0b10100000  # sectors 0 and 2 present; everything else reads zeros
    bitmap[100] = 0xFF  # sectors 800..807
    build(img, Layout(size=8 * MiB, creator=b"d2v "), {1: b"\x77" * (2 * MiB)}, {1: bytes(bitmap)})
    expected = bytearray(8 * MiB)
    base = 2 * MiB
    for sector in (0, 2, *range(800, 808)):
        expected[base + sector * 512 : base + (sector + 1) * 512] = b"\x77" * 512
    with vhdtool.open(img) as image:
        assert image.pread(0, image.size) == expected
        runs = [(e.offset, e.length) for e in image.extents() if not e.zero]
        assert runs == [(base, 512), (base + 1024, 512), (base + 800 * 512, 8 * 512)]
    result = cli("check", img)
    assert (result.returncode == 0 and "bitmap-partial" not in result.stdout) or "only some" in result.stdout
    # writing a partial sector into a clear sector keeps the rest of that sector zero
    with vhdtool.open(img, writable=True) as image:
        image.pwrite(base + 512 + 10, b"abc")
        expected[base + 512 + 10 : base + 512 + 13] = b"abc"
        assert image.pread(0, image.size) == expected
    with vhdtool.open(img) as image:
        assert image.pread(0, image.size) == expected


def _utf16le(text: str) -> bytes:
    return text.encode("utf-16-le")


@pytest.mark.parametrize(
    ("slot", "code", "data", "space"),
    [
        (0, b"W2ru", _utf16le(".\\parent.vhd"), 512),  # bytes, as Windows writes
        (0, b"W2ku", _utf16le("C:\\VMs\\gone\\parent.vhd"), 1),  # absolute path of another host: falls back
        (4, b"Wi2r", b".\\parent.vhd", 1),  # Virtual PC: slot 4, ASCII, data space in sectors
        (5, b"Wi2k", b"C:\\old\\parent.vhd", 1),
        (6, b"MacX", b"file://localhost/Volumes/x/parent.vhd", 1),
    ],
    ids=["W2ru", "W2ku", "Wi2r", "Wi2k", "MacX"],
)
def test_locator_encodings(tmp_path: Path, slot: int, code: bytes, data: bytes, space: int) -> None:
    parent = tmp_path / "parent.vhd"
    vhdtool.create(parent, size=8 * MiB)
    with vhdtool.open(parent, writable=True) as p:
        p.pwrite(0, b"P" * (8 * MiB))
    child = tmp_path / "child.vhd"
    build(
        child,
        Layout(
            size=8 * MiB, disk_type=4, bitmap_fill=0, parent_uuid=footer_uuid(parent),
            parent_name="C:\\VMs\\parent.vhd", locators=[(slot, code, data, space)],
        ),
        {0: b"C" * (2 * MiB)},
        {0: b"\xff" + bytes(511)},  # sectors 0-7 in the child, the rest from the parent
    )  # fmt: skip
    with vhdtool.open(child) as image:
        got = image.pread(0, 2 * MiB)
        assert got[:4096] == b"C" * 4096 and got[4096:] == b"P" * (2 * MiB - 4096)
        assert image.pread(2 * MiB, 6 * MiB) == b"P" * (6 * MiB)
    doc = cli("info", "--json", child)
    assert doc.returncode == 0, doc.stderr


def test_libvhdi_reads_a_windows_differencing_layout(tmp_path: Path) -> None:
    parent = tmp_path / "parent.vhd"
    vhdtool.create(parent, size=8 * MiB)
    child = tmp_path / "child.vhd"
    build(
        child,
        Layout(size=8 * MiB, disk_type=4, bitmap_fill=0, parent_uuid=footer_uuid(parent),
               parent_name="parent.vhd", locators=[(0, b"W2ru", _utf16le(".\\parent.vhd"), 512)]),
        {},
    )  # fmt: skip
    out = run(need("vhdiinfo"), child).stdout
    assert "parent.vhd" in out
    with vhdtool.open(child) as image:
        assert image.parent is not None and os.path.samefile(image.parent.path, parent)
