"""Bad input: one clear error line, a non-zero exit, no traceback, no byte changed."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import (
    assert_clean_error,
    bat_entry_offset,
    digest,
    need,
    patch_footer,
    patch_header,
    run,
)
from tests.helpers import (
    vhdtool as cli,
)
from vhdtool.errors import CorruptImageError, LockedError, NotVhdError, ParentError, ReadOnlyError, VhdError
from vhdtool.format.rules import MiB


def _truncate(img: Path) -> None:
    data = img.read_bytes()[:300000]
    img.write_bytes(data)


def _wrong_cookies(img: Path) -> None:
    patch_footer(img, cookie=b"notavhd!")


def _bat_past_end(img: Path) -> None:
    with open(img, "r+b") as f:
        f.seek(bat_entry_offset(img, 0))
        f.write(struct.pack(">I", 0x7FFFFFF0))


def _absurd_size(img: Path) -> None:
    patch_footer(img, current_size=1 << 62, original_size=1 << 62)


def _block_size(value: int) -> Callable[[Path], None]:
    return lambda img: patch_header(img, 32, struct.pack(">I", value))


def _huge_table(img: Path) -> None:
    patch_header(img, 28, struct.pack(">I", 0xFFFFFFF0))


def _header_outside(img: Path) -> None:
    patch_footer(img, data_offset=1 << 40)


def _header_cookie(img: Path) -> None:
    patch_header(img, 0, b"xxsparse")


def _both_footers_bad(img: Path) -> None:
    patch_footer(img, checksum=0x12345678)
    patch_header(img, 28, struct.pack(">I", 1 << 20))  # and a header that does not add up


DAMAGE = {
    "truncated": _truncate,
    "wrong-cookies": _wrong_cookies,
    "bat-past-end": _bat_past_end,
    "absurd-size": _absurd_size,
    "block-size-0": _block_size(0),
    "block-size-3M": _block_size(3 * MiB),
    "huge-table": _huge_table,
    "header-outside": _header_outside,
    "header-cookie": _header_cookie,
    "bad-everything": _both_footers_bad,
}


CUT_BLOCKS = ("bat-past-end", "bad-everything")
"""Damage that leaves some blocks past the end of the file: info still describes the image, with a
warning (as vhdiinfo does), since its metadata is readable and other blocks are whole. A file cut
before all of its stored blocks ("truncated") stays an error."""


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_images_are_refused_cleanly(qemu_image: Path, damage: str) -> None:
    DAMAGE[damage](qemu_image)
    before = digest(qemu_image)
    with pytest.raises(VhdError):
        vhdtool.open(qemu_image, writable=True).close_chain()
    for command in (["info"], ["info", "--json"], ["check"]):
        result = cli(*command, qemu_image)
        assert "Traceback" not in result.stderr
        if command[0] == "check":
            assert result.returncode in (2, 1), (damage, result)
        elif damage in CUT_BLOCKS:
            shown = result.stdout + result.stderr
            assert result.returncode == 0 and "past the end of the file" in shown, (damage, result)
        else:
            assert_clean_error(result)
            assert result.returncode == 1, (damage, result)
    assert digest(qemu_image) == before


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(511), os.urandom(4096), b"conectix" + bytes(600), b"\0" * 1024 * 1024],
    ids=["empty", "511-random", "4k-random", "cookie-only", "zeros"],
)
def test_not_a_vhd(tmp_path: Path, content: bytes) -> None:
    img = tmp_path / "x.vhd"
    img.write_bytes(content)
    with pytest.raises(VhdError):
        vhdtool.open(img)
    assert_clean_error(cli("info", img), 1)
    assert_clean_error(cli("check", img), 1)
    assert img.read_bytes() == content


def test_qcow2_is_not_a_vhd(tmp_path: Path) -> None:
    img = tmp_path / "x.qcow2"
    run(need("qemu-img"), "create", "-q", "-f", "qcow2", img, "16M")
    with pytest.raises(NotVhdError):
        vhdtool.open(img)
    assert_clean_error(cli("info", img), 1)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_clean_error(cli("info", tmp_path / "missing.vhd"), 1)
    assert_clean_error(cli("info", tmp_path))
    assert_clean_error(cli("check", tmp_path))


def test_damaged_trailing_footer_falls_back_to_copy_read_only(qemu_image: Path, tmp_path: Path) -> None:
    with vhdtool.open(qemu_image) as img:
        expected = img.pread(0, img.size)
    size = qemu_image.stat().st_size
    with open(qemu_image, "r+b") as f:
        f.seek(size - 512 + 100)
        f.write(b"garbage")  # checksum no longer matches
    before = digest(qemu_image)
    with vhdtool.open(qemu_image) as img:
        assert img.pread(0, img.size) == expected
        assert any("copy at offset 0" in w for w in img.warnings)
    with pytest.raises(CorruptImageError, match="repair"):
        vhdtool.open(qemu_image, writable=True)
    result = cli("info", qemu_image)
    assert result.returncode == 0 and "copy at offset 0" in result.stderr
    assert cli("check", qemu_image).returncode == 2
    assert digest(qemu_image) == before


def test_511_byte_footer(qemu_image: Path) -> None:
    with vhdtool.open(qemu_image) as img:
        expected = img.pread(0, img.size)
    data = qemu_image.read_bytes()
    qemu_image.write_bytes(data[:-1])  # pre-Virtual-PC-2004 images end in a 511-byte footer
    with vhdtool.open(qemu_image) as img:
        assert img.pread(0, img.size) == expected
    assert cli("check", qemu_image).returncode == 0


def test_missing_parent(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    os.unlink(tmp_path / "p.vhd")
    with pytest.raises(ParentError, match="not found"):
        vhdtool.open(tmp_path / "c.vhd")
    shown = cli("info", tmp_path / "c.vhd")  # its own metadata, as qemu-img info and vhdiinfo show it
    assert shown.returncode == 0 and "parent disk not found" in shown.stderr and "p.vhd" in shown.stdout
    assert cli("check", tmp_path / "c.vhd").returncode == 1  # could not be checked, as qemu-img check


def test_mismatched_parent_names_both_files(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB, overwrite=True)
    with pytest.raises(ParentError, match="UUID") as e:
        vhdtool.open(tmp_path / "c.vhd")
    assert "c.vhd" in str(e.value) and "p.vhd" in str(e.value)
    assert_clean_error(cli("info", tmp_path / "c.vhd"), 1)  # a wrong parent is not a missing one


def test_chain_loop_is_an_error(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "base.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "b.vhd", parent=tmp_path / "base.vhd")
    vhdtool.create(tmp_path / "a.vhd", parent=tmp_path / "b.vhd")
    with vhdtool.open(tmp_path / "a.vhd") as a:
        a_uuid = a.meta.uuid.bytes
    os.unlink(tmp_path / "base.vhd")
    shutil.copy(tmp_path / "a.vhd", tmp_path / "base.vhd")  # b's parent is now a copy of a...
    patch_header(tmp_path / "b.vhd", 40, a_uuid)  # ...whose UUID b expects: a -> b -> a
    with pytest.raises(ParentError, match="loops"):
        vhdtool.open(tmp_path / "a.vhd")
    assert_clean_error(cli("info", tmp_path / "a.vhd"), 1)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "d.vhd", size=4 * MiB)
    with vhdtool.open(tmp_path / "d.vhd", writable=True):
        with pytest.raises(LockedError):
            vhdtool.open(tmp_path / "d.vhd", writable=True)
        vhdtool.open(tmp_path / "d.vhd").close()  # readers (info, convert) still work


def test_parent_cannot_be_written_while_child_is_open(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    with vhdtool.open(tmp_path / "c.vhd", writable=True) as child:
        with pytest.raises(ReadOnlyError):
            child.parent.pwrite(0, b"x")
        with pytest.raises(LockedError):
            vhdtool.open(tmp_path / "p.vhd", writable=True)


def test_read_only_image_refuses_writes(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "d.vhd", size=4 * MiB)
    with vhdtool.open(tmp_path / "d.vhd") as img, pytest.raises(ReadOnlyError):
        img.pwrite(0, b"x")


def test_requests_outside_the_disk(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "d.vhd", size=4 * MiB)
    with vhdtool.open(tmp_path / "d.vhd", writable=True) as img:
        # reads behave like os.pread: short at the end, empty past it
        assert img.pread(4 * MiB - 1, 2) == b"\0"
        assert img.pread(4 * MiB, 1) == b""
        for offset, length in ((4 * MiB, 1), (-1, 2), (4 * MiB - 1, 2)):
            with pytest.raises(VhdError):
                img.pwrite(offset, bytes(length))
        with pytest.raises(VhdError):
            img.pread(-1, 2)
        assert os.path.getsize(tmp_path / "d.vhd") < 1 * MiB  # nothing was written


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "1000"],
        ["--size", "2041G"],
        ["--size", "0"],
        ["--size", "lots"],
        ["--block-size", "3M", "--size", "1G"],
        ["--block-size", "0", "--size", "1G"],
        ["--type", "fixed", "--block-size", "2M", "--size", "1G"],
        ["--parent", "missing.vhd"],
    ],
)
def test_create_refuses(tmp_path: Path, args: list[str]) -> None:
    result = cli("create", *args, tmp_path / "n.vhd", cwd=tmp_path)
    assert_clean_error(result)
    assert not (tmp_path / "n.vhd").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_create_does_not_clobber(tmp_path: Path) -> None:
    (tmp_path / "n.vhd").write_bytes(b"precious")
    assert_clean_error(cli("create", "--size", "1M", tmp_path / "n.vhd"), 64)
    assert (tmp_path / "n.vhd").read_bytes() == b"precious"
