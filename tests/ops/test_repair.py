"""`vhdtool repair` on images damaged in each way `check` detects: check is clean afterwards,
the content is kept (or, for a cleared block, only that block changes), the metadata is backed up."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, get_bat, need, patch_footer, patch_header, qemu_raw, run, set_bat
from tests.helpers import vhdtool as cli
from tests.ops.oputil import digest, folder_digests, qemu_compare, read_all
from vhdtool.format.rules import MiB
from vhdtool.format.structs import vhd_checksum
from vhdtool.ops.repair import BACKUP_MAGIC

BLOCK = 2 * MiB


def _poke(img: Path, offset: int, data: bytes, fix_checksum_at: int | None = None) -> None:
    """Overwrite bytes of the 512-byte footer at ``offset`` (negative: from the end)."""
    with open(img, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        start = f.tell()
        raw = bytearray(f.read(512))
        raw[: len(data)] = data if len(data) == 512 else raw[: len(data)]
        if len(data) != 512:
            raw[100 : 100 + len(data)] = data  # reserved area: only the checksum notices
        if fix_checksum_at is not None:
            raw[64:68] = vhd_checksum(raw, 64).to_bytes(4, "big")
        f.seek(start)
        f.write(raw)


def _copy_differs(img: Path) -> None:
    with open(img, "r+b") as f:
        raw = bytearray(f.read(512))
        raw[24] ^= 1  # the copy's time stamp
        raw[64:68] = vhd_checksum(raw, 64).to_bytes(4, "big")
        f.seek(0)
        f.write(raw)


def _leak(img: Path) -> None:
    data = img.read_bytes()
    img.write_bytes(data[:-512] + bytes(BLOCK + 512) + data[-512:])


def _leak_and_destroy(img: Path) -> None:
    """Footer gone after far more unreferenced space than an interrupted growth leaves."""
    data = img.read_bytes()
    img.write_bytes(data[:-512] + bytes(80 * MiB) + os.urandom(512))


def _no_reserved_bit(img: Path) -> None:
    patch_footer(img, features=0)


DAMAGE: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "trailing-destroyed": (lambda p: _poke(p, -512, os.urandom(512)), {"torn-tail"}),
    "trailing-destroyed-after-room": (_leak_and_destroy, {"footer-missing"}),
    "trailing-checksum": (lambda p: _poke(p, -512, b"junk"), {"footer-checksum"}),
    "copy-destroyed": (lambda p: _poke(p, 0, bytes(512)), {"footer-copy-missing"}),
    "copy-checksum": (lambda p: _poke(p, 0, b"junk"), {"footer-copy-checksum"}),
    "copy-differs": (_copy_differs, {"footer-copy-differs"}),
    "header-checksum": (lambda p: patch_header(p, 600, b"junk", fix_checksum=False), {"header-checksum"}),
    "reserved-bit": (_no_reserved_bit, {"footer-features"}),
    "bat-outside": (lambda p: set_bat(p, 30, 0x7FFFFFF0), {"bat-outside"}),
    "bat-over-metadata": (lambda p: set_bat(p, 3, 1), {"bat-overlap-metadata"}),
    "leak": (_leak, {"leak"}),
}


def _codes(img: Path) -> set[str]:
    return {f["code"] for f in json.loads(cli("check", "--json", img).stdout)["findings"]}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_repair_each_damage(tmp_path: Path, qemu_image: Path, damage: str) -> None:
    expected = tmp_path / "expected.raw"
    expected.write_bytes(read_all(qemu_image))
    hurt, codes = DAMAGE[damage]
    hurt(qemu_image)
    assert codes <= _codes(qemu_image)
    damaged = qemu_image.read_bytes()
    result = cli("repair", qemu_image)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip()
    assert cli("check", qemu_image).returncode == 0 and _codes(qemu_image) == set()
    assert qemu_compare(expected, "raw", qemu_image, "vpc") == 0
    backup = Path(f"{qemu_image}.repair-backup")
    head, _, body = backup.read_bytes().partition(b"\n" + b"{")
    doc = json.loads(b"{" + body.split(b"\n", 1)[0])
    assert head + b"\n" == BACKUP_MAGIC and doc["file-size"] == len(damaged)
    blob = body.split(b"\n", 1)[1]
    for offset, length in doc["ranges"]:  # the backup holds the damaged metadata as it was
        assert blob[:length] == damaged[offset : offset + length]
        blob = blob[length:]


def test_overlapping_blocks(tmp_path: Path, qemu_image: Path) -> None:
    before = read_all(qemu_image)
    set_bat(qemu_image, 1, get_bat(qemu_image, 0) + 8)
    assert "bat-overlap" in _codes(qemu_image)
    assert cli("repair", qemu_image).returncode == 0
    assert _codes(qemu_image) == set()
    after = read_all(qemu_image)
    assert after[BLOCK : 2 * BLOCK] == bytes(BLOCK)  # the cleared block reads zeros, the rest is kept
    assert after[:BLOCK] == before[:BLOCK] and after[2 * BLOCK :] == before[2 * BLOCK :]


def test_fixed_footer_checksum(tmp_path: Path) -> None:
    img = tmp_path / "f.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=fixed", img, "8M")
    _poke(img, -512, b"junk")
    assert _codes(img) == {"footer-checksum"}
    assert cli("repair", img).returncode == 0 and _codes(img) == set()


def test_lost_parent_is_found_by_uuid(tmp_path: Path, qemu_image: Path) -> None:
    child = tmp_path / "c.vhd"
    vhdtool.create(child, parent=qemu_image)
    expected = read_all(child)
    qemu_image.rename(tmp_path / "renamed.vhd")
    assert "parent-missing" in _codes(child)
    result = cli("repair", child)
    assert result.returncode == 0, result.stderr
    assert read_all(child) == expected and _codes(child) == set()


def test_unrepairable_parent_exits_2(tmp_path: Path, qemu_image: Path) -> None:
    child = tmp_path / "c.vhd"
    vhdtool.create(child, parent=qemu_image)
    vhdtool.create(qemu_image, size=4 * MiB, overwrite=True)  # another disk under the parent's name
    result = cli("repair", child)
    assert result.returncode == 2 and "not repaired" in result.stderr and "Traceback" not in result.stderr


def test_clean_image_and_dry_run_change_nothing(tmp_path: Path, qemu_image: Path) -> None:
    before = folder_digests(tmp_path)
    result = cli("repair", qemu_image)
    assert result.returncode == 0 and "nothing to repair" in result.stdout
    assert folder_digests(tmp_path) == before
    _poke(qemu_image, 0, b"junk")
    before = folder_digests(tmp_path)
    result = cli("repair", "--dry-run", qemu_image)
    assert result.returncode == 0 and "would: rewrote the footer copy" in result.stdout
    assert folder_digests(tmp_path) == before


def test_not_a_vhd(tmp_path: Path) -> None:
    (tmp_path / "x.raw").write_bytes(os.urandom(8192))
    digest_before = digest(tmp_path / "x.raw")
    assert_clean_error(cli("repair", tmp_path / "x.raw"))
    assert digest(tmp_path / "x.raw") == digest_before and not (tmp_path / "x.raw.repair-backup").exists()


def test_fixed_disk_cut_short(tmp_path: Path) -> None:
    img = tmp_path / "f.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", img, "8M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x33 0 5M", img)
    data = img.read_bytes()
    img.write_bytes(data[: 6 * MiB] + data[-512:])  # the last 2 MiB of the disk are gone
    assert "fixed-truncated" in _codes(img)
    assert cli("repair", img).returncode == 0 and _codes(img) == set()
    assert read_all(img) == data[: 5 * MiB] + bytes(3 * MiB)


def test_fixed_disk_with_an_unaligned_size_keeps_what_qemu_read(tmp_path: Path) -> None:
    """The safety campaign's case: a fixed disk whose Current Size is not whole sectors. The
    footer stays where it is and the size becomes its offset; repair once moved the footer to the
    unaligned size instead, and qemu could no longer open the disk it had read."""
    img = tmp_path / "f.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", img, "3M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x33 0 3M", img)
    before = qemu_raw(img, tmp_path)
    patch_footer(img, current_size=3 * MiB + 128)
    assert {"size-unaligned", "fixed-truncated"} <= _codes(img)
    result = cli("repair", img)
    assert result.returncode == 0, result.stderr
    assert f"Current Size from {3 * MiB + 128} to {3 * MiB}" in result.stdout
    assert _codes(img) == set() and qemu_raw(img, tmp_path) == before == read_all(img)


def test_child_naming_no_parent(tmp_path: Path, qemu_image: Path) -> None:
    child = tmp_path / "c.vhd"
    vhdtool.create(child, parent=qemu_image)
    expected = read_all(child)
    patch_header(child, 64, bytes(512 + 8 * 24))  # no parent name, no locators
    assert "parent-no-locator" in _codes(child)
    assert cli("repair", child).returncode == 0
    assert _codes(child) == set() and read_all(child) == expected


def test_many_bad_entries_are_counted_all_and_listed_in_part(tmp_path: Path) -> None:
    """A BAT with more bad entries than check lists (LISTED_PER_CODE a kind): the counts are
    exact, the listing short, and repair still clears every one of them."""
    from vhdtool.ops.check import LISTED_PER_CODE

    image = tmp_path / "d.vhd"
    vhdtool.create(image, size=64 * MiB, block_size=512 * 1024)  # 128 BAT entries
    bad = range(10, 10 + 2 * LISTED_PER_CODE + 5)
    for index in bad:
        set_bat(image, index, 0x7FFFFFF0)
    result = cli("check", "--json", image)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    listed = [f for f in report["findings"] if f["code"] == "bat-outside"]
    assert len(listed) == LISTED_PER_CODE
    assert report["findings-not-listed"] == {"bat-outside": len(bad) - LISTED_PER_CODE}
    assert report["corruptions"] == len(bad)
    text = cli("check", image).stdout
    assert f"... and {len(bad) - LISTED_PER_CODE} more findings like these (bat-outside)" in text
    assert len(text.splitlines()) == LISTED_PER_CODE + 2
    assert cli("repair", image).returncode == 0
    assert cli("check", image).returncode in (0, 3)
    assert all(get_bat(image, index) == 0xFFFFFFFF for index in bad)


def test_a_stale_copy_qemu_reads_is_kept_over_a_footer_qemu_refuses(tmp_path: Path) -> None:
    """The safety campaign's case: the footer's CHS geometry gives qemu more than the BAT holds
    (qemu refuses such a disk), the copy at offset 0 (what qemu reads) fits. Repair restores the
    footer from the copy; it once rewrote the copy from the footer and qemu lost the disk."""
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=4 * MiB)
    with vhdtool.open(img, writable=True) as disk:
        disk.pwrite(0, b"\x5a" * MiB)
    before = qemu_raw(img, tmp_path)
    patch_footer(img, trailing_only=True, current_size=3 * MiB, geometry=(513, 4, 17))  # a resize cut short
    assert "footer-copy-stale" in _codes(img) and qemu_raw(img, tmp_path) == before
    result = cli("repair", img)
    assert result.returncode == 0, result.stderr
    assert "restored the footer" in result.stdout
    assert _codes(img) <= {"size-chs"} and qemu_raw(img, tmp_path) == before


def test_a_refusal_of_pass_two_comes_before_pass_one_writes(tmp_path: Path) -> None:
    """The safety campaign's case: a header checksum to recompute (pass 1) and every block bad
    (pass 2 refuses): the refusal came after the checksum was written."""
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=6 * MiB)
    with vhdtool.open(img, writable=True) as disk:
        disk.pwrite(0, b"\x11" * (6 * MiB))
    for block in range(3):
        set_bat(img, block, 0)
    with open(img, "r+b") as f:
        f.seek(512 + 1000)  # reserved bytes of the dynamic header: only its checksum is wrong
        f.write(b"\x01")
    assert "header-checksum" in _codes(img)
    before = folder_digests(tmp_path)
    result = cli("repair", img)
    assert_clean_error(result, 1)
    assert "look bad" in result.stderr and folder_digests(tmp_path) == before
