"""`vhdtool resize`: grown disks keep their data and read zeros beyond, peers see the new size;
shrinking refuses to drop data; bad input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, patch_footer, qemu_img_size, run, vhdiinfo_size
from tests.helpers import vhdtool as cli
from tests.ops.oputil import digest, folder_digests, qemu_compare, read_all
from vhdtool.format.rules import MiB
from vhdtool.ops.check import check_image
from vhdtool.ops.resize import resize


def _qemu_image(path: Path, size: str, *options: str) -> Path:
    run(need("qemu-img"), "create", "-q", "-f", "vpc", *options, path, size)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 0 3M", "-c", "write -P 0x11 9M 1M", path)
    return path


def _grown_ok(path: Path, before: bytes, new_size: int) -> None:
    assert qemu_img_size(path) == vhdiinfo_size(path) == new_size
    after = read_all(path)
    assert after[: len(before)] == before and after[len(before) :] == bytes(new_size - len(before))
    assert cli("check", path).returncode == 0
    raw = path.with_suffix(".expected.raw")
    raw.write_bytes(after)
    assert qemu_compare(raw, "raw", path, "vpc") == 0


@pytest.mark.parametrize("options", [["-o", "force_size=on"], ["-o", "force_size=on,subformat=fixed"]])
def test_grow(tmp_path: Path, options: list[str]) -> None:
    img = _qemu_image(tmp_path / "d.vhd", "10M", *options)
    before = read_all(img)
    result = cli("resize", img, "+20M")
    assert result.returncode == 0, result.stderr
    _grown_ok(img, before, 30 * MiB)


def test_grow_beyond_the_bat_moves_blocks(tmp_path: Path) -> None:
    # qemu's BAT for 10M holds 128 entries (one sector); 264M needs 132: the first blocks must move
    img = _qemu_image(tmp_path / "d.vhd", "10M", "-o", "force_size=on")
    before = read_all(img)
    doc = json.loads(cli("resize", "--json", img, "264M").stdout)
    assert doc["moved-blocks"] >= 1 and doc["new-size"] == 264 * MiB
    _grown_ok(img, before, 264 * MiB)
    with vhdtool.open(img, writable=True) as disk:  # the grown table takes new blocks
        disk.pwrite(260 * MiB, b"new block")
    assert read_all(img)[260 * MiB : 260 * MiB + 9] == b"new block"
    assert cli("check", img).returncode == 0


def test_grow_vhdtool_made_disk_with_small_blocks(tmp_path: Path) -> None:
    # 512 KiB blocks: 300M needs 600 entries, the 12 entries' sector holds 128
    vhdtool.create(tmp_path / "v.vhd", size=6 * MiB, block_size=512 * 1024)
    with vhdtool.open(tmp_path / "v.vhd", writable=True) as disk:
        disk.pwrite(0, b"\x77" * MiB)
    before = read_all(tmp_path / "v.vhd")
    assert cli("resize", tmp_path / "v.vhd", "300M").returncode == 0
    _grown_ok(tmp_path / "v.vhd", before, 300 * MiB)


@pytest.mark.parametrize("options", [["-o", "force_size=on"], ["-o", "force_size=on,subformat=fixed"]])
def test_shrink(tmp_path: Path, options: list[str]) -> None:
    img = _qemu_image(tmp_path / "d.vhd", "12M", *options)
    before = read_all(img)
    untouched = digest(img)
    result = cli("resize", img, "4M")  # data at 9M would be lost
    assert_clean_error(result)
    assert "--force" in result.stderr and digest(img) == untouched
    result = cli("resize", img, "10M")  # only zeros past 10M
    assert result.returncode == 0 and "filesystem" in result.stderr
    assert qemu_img_size(img) == 10 * MiB and read_all(img) == before[: 10 * MiB]
    assert cli("resize", "--force", img, "-7M").returncode == 0
    assert read_all(img) == before[: 3 * MiB]
    assert cli("check", img).returncode == 0
    assert cli("resize", img, "9M").returncode == 0  # what was dropped does not come back
    assert read_all(img) == before[: 3 * MiB] + bytes(6 * MiB)


def test_shrink_reclaims_blocks(tmp_path: Path) -> None:
    img = _qemu_image(tmp_path / "d.vhd", "12M", "-o", "force_size=on")
    size = img.stat().st_size
    assert cli("resize", "--force", img, "4M").returncode == 0
    assert img.stat().st_size < size - 2 * MiB
    assert cli("check", img).returncode == 0


def test_refusals_change_nothing(tmp_path: Path) -> None:
    base = _qemu_image(tmp_path / "base.vhd", "10M", "-o", "force_size=on")
    vhdtool.create(tmp_path / "child.vhd", parent=base)
    saved = _qemu_image(tmp_path / "saved.vhd", "10M", "-o", "force_size=on")
    patch_footer(saved, saved_state=1)
    before = folder_digests(tmp_path)
    for args in (
        ["child.vhd", "20M"],
        ["saved.vhd", "20M"],
        ["base.vhd", "10M+1"],
        ["base.vhd", "3000G"],
        ["base.vhd", "-20M"],
        ["base.vhd", "lots"],
        ["missing.vhd", "20M"],
    ):
        assert_clean_error(cli("resize", *args, cwd=tmp_path))
    assert folder_digests(tmp_path) == before


def test_grow_fixed_not_4k_aligned(tmp_path: Path) -> None:
    # 5 MiB + 512: no one-step footer move (INSERT_RANGE wants whole filesystem blocks)
    img = tmp_path / "f.vhd"
    vhdtool.create(img, size=5 * MiB + 512, type="fixed")
    with vhdtool.open(img, writable=True) as disk:
        disk.pwrite(5 * MiB - 100, b"\x42" * 612)
    before = read_all(img)
    assert cli("resize", img, "+1M").returncode == 0
    _grown_ok(img, before, 6 * MiB + 512)


def test_a_resize_stopped_between_its_footers_is_repairable(tmp_path: Path) -> None:
    """The trailing footer has the new size, the copy at offset 0 the old one (a resize killed
    between the two writes): check says so without calling it corruption, repair aligns the copy,
    and qemu-img then reads the new size too."""
    path = tmp_path / "d.vhd"
    vhdtool.create(path, size=20 << 20)
    old_copy = path.read_bytes()[:512]
    resize(path, 64 << 20)
    with open(path, "r+b") as f:
        f.write(old_copy)
    report = check_image(path)
    assert report.exit_code == 3, [f.message for f in report.findings]
    assert [f.code for f in report.findings] == ["footer-copy-stale"]
    assert qemu_img_size(path) == 20 << 20  # qemu reads the copy
    assert cli("repair", path).returncode == 0
    assert check_image(path).exit_code == 0
    assert qemu_img_size(path) == 64 << 20 == vhdiinfo_size(path)


def test_grow_reads_zeros_where_blocks_lay_past_the_old_end(tmp_path: Path) -> None:
    """Blocks allocated past the disk's end (another tool's shrink, or one interrupted) hold old
    data; growing over them must not bring it back: the grown part reads zeros."""
    path = tmp_path / "d.vhd"
    vhdtool.create(path, size=8 * MiB)
    with vhdtool.open(path, writable=True) as disk:
        disk.pwrite(0, b"\x5a" * MiB)
        disk.pwrite(5 * MiB, b"\x11" * MiB)  # block 2: past the end once the size says 3 MiB
    patch_footer(path, current_size=3 * MiB, original_size=3 * MiB)
    before = read_all(path)
    assert len(before) == 3 * MiB
    assert cli("resize", path, "8M").returncode == 0
    _grown_ok(path, before, 8 * MiB)
