"""Damaged, copied and related images: no command turns readable data into lost data.

Each test is a case a new user met: a damaged Block Size field, a copy's reset-id next to the
original's children, a parent shrunk under its child, a repair that must say what it discards,
a signed size. qemu-img and qemu-io make and read the images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import (
    assert_clean_error,
    make_qemu_image,
    need,
    patch_footer,
    patch_header,
    qemu_raw,
    run,
    set_bat,
)
from tests.helpers import vhdtool as cli
from tests.ops.oputil import digest, folder_digests, read_all
from vhdtool.format.rules import MiB
from vhdtool.ops.resize import resize


def _qemu_image(path: Path, size: str = "64M") -> Path:
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", path, size)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 0 5M", path)
    return path


def _findings(path: Path) -> list[dict]:
    return json.loads(cli("check", "--json", path).stdout)["findings"]


@pytest.mark.parametrize("value", [0x80000000, 0x100000, 0x400000, 3 * MiB])
def test_a_damaged_block_size_is_named_and_inferred(tmp_path: Path, value: int) -> None:
    img = _qemu_image(tmp_path / "a.vhd")
    want = qemu_raw(img, tmp_path)
    patch_header(img, 32, value.to_bytes(4, "big"))  # the checksum fixed: only the field is wrong
    result = cli("check", img)
    assert result.returncode == 2
    assert "Block Size field" in result.stdout and "the layout shows 2097152" in result.stdout
    assert [f["code"] for f in _findings(img) if f["severity"] == "corruption"] == ["block-size"]
    dry = cli("repair", "--dry-run", img)
    assert f"would: set the dynamic header's Block Size field from {value} to 2097152" in dry.stdout
    repaired = cli("repair", img)
    assert repaired.returncode == 0, repaired
    assert f"set the dynamic header's Block Size field from {value} to 2097152" in repaired.stdout
    assert qemu_raw(img, tmp_path) == want and cli("check", img).returncode == 0


def test_a_block_size_nothing_shows_is_refused_not_guessed(tmp_path: Path) -> None:
    """One block and a BAT that fits several sizes: no inference, so repair clears nothing."""
    img = tmp_path / "one.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", img, "2M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 0 1M", img)
    patch_header(img, 32, (0x80000000).to_bytes(4, "big"))
    assert "cannot be inferred" in cli("check", img).stdout
    before = digest(img)
    result = cli("repair", img)
    assert result.returncode == 2 and "not repaired" in result.stderr and "Traceback" not in result.stderr
    assert digest(img) == before  # only the metadata backup beside it


def test_repair_refuses_to_clear_every_block_stored_in_the_file(tmp_path: Path) -> None:
    """A damaged BAT offset or footer can make every block look bad; repair stops instead."""
    img = _qemu_image(tmp_path / "a.vhd")
    for index in (0, 1, 2):
        set_bat(img, index, 3)  # every stored block now starts inside the metadata
    before = digest(img)
    result = cli("repair", img)
    assert_clean_error(result, 1)
    assert "all 3 blocks stored in the file look bad" in result.stderr
    assert digest(img) == before


def test_repair_of_a_cut_file_lists_the_zeroed_range(tmp_path: Path) -> None:
    img = _qemu_image(tmp_path / "a.vhd")
    want = qemu_raw(img, tmp_path)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) - 512 - MiB])  # the footer and the last 1 MiB of block 2 gone
    dry = cli("repair", "--dry-run", img)
    line = "block 2 was cut short by the end of the file: disk bytes 5242880-6291455 read as zeros"
    assert f"would: {line}" in dry.stdout, dry.stdout
    real = cli("repair", img)
    assert real.returncode == 0 and line in real.stdout
    listed = [s.removeprefix("would: ") for s in dry.stdout.splitlines()]
    assert listed == [s for s in real.stdout.splitlines() if not s.startswith(("metadata saved", "reclaimed"))]
    got = qemu_raw(img, tmp_path)
    assert got[: 5 * MiB] == want[: 5 * MiB] and got[5 * MiB :] == bytes(len(got) - 5 * MiB)


@pytest.mark.parametrize(
    ("make", "damage"),
    [
        (_qemu_image, {"current_size": 10995840}),
        (_qemu_image, {"current_size": 1 << 30}),
        (make_qemu_image, {"geometry": (0, 2, 0)}),  # creator 'qemu': qemu reads its size from CHS
    ],
)
def test_of_two_footers_that_differ_repair_keeps_the_one_that_fits(
    tmp_path: Path, make: Callable[[Path], object], damage: dict[str, tuple[int, ...] | int]
) -> None:
    """A trailing footer with a sane checksum but a size no BAT covers, or a geometry that changes
    the size qemu reads, over a good copy at offset 0 (the one qemu reads): repair restores the
    trailing footer from the copy. Rewriting the copy from the footer instead would leave a disk
    qemu-img cannot open, or reads 0 bytes from."""
    img = tmp_path / "a.vhd"
    make(img)
    want = qemu_raw(img, tmp_path)
    patch_footer(img, trailing_only=True, **damage)
    result = cli("repair", img)
    assert result.returncode == 0 and "restored the footer" in result.stdout, result.stdout
    assert "from the copy at offset 0" in result.stdout
    assert qemu_raw(img, tmp_path) == want and cli("check", img).returncode == 0


def test_reset_id_of_a_copy_leaves_the_originals_children(tmp_path: Path) -> None:
    disk, child, copy = tmp_path / "d.vhd", tmp_path / "dc.vhd", tmp_path / "copy.vhd"
    vhdtool.create(disk, size=64 * MiB)
    vhdtool.create(child, parent=disk)
    shutil.copy(disk, copy)
    before = digest(child)
    result = cli("reset-id", "--json", copy, "--children", tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout)["children"] == []
    assert digest(child) == before and cli("check", child).returncode == 0
    # the copy's own child is still updated
    own = tmp_path / "own.vhd"
    vhdtool.create(own, parent=copy)
    result = cli("reset-id", "--json", copy, "--children", tmp_path)
    assert json.loads(result.stdout)["children"] == [str(own)]
    assert digest(child) == before and cli("check", own).returncode == 0


def test_relink_refused_halfway_changes_nothing(tmp_path: Path) -> None:
    """Relink edits the deepest disk first: a corrupt top must be refused before that, or the
    chain is left half relinked."""
    base, mid, top = tmp_path / "base.vhd", tmp_path / "mid.vhd", tmp_path / "top.vhd"
    vhdtool.create(base, size=8 * MiB)
    vhdtool.create(mid, parent=base)
    vhdtool.create(top, parent=mid)
    with vhdtool.open(top, writable=True) as img:
        img.pwrite(0, b"\x22" * (3 * MiB))
    set_bat(top, 1, 1)  # into the dynamic header
    before = folder_digests(tmp_path)
    result = cli("relink", top)
    assert_clean_error(result, 1)
    assert "overlaps the dynamic header" in result.stderr and folder_digests(tmp_path) == before


def _parent_with_child(tmp_path: Path) -> tuple[Path, Path]:
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    vhdtool.create(parent, size=100 * MiB)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x33 90M 1M", parent)
    vhdtool.create(child, parent=parent)
    return parent, child


def test_shrinking_a_parent_under_its_child_is_refused(tmp_path: Path) -> None:
    parent, child = _parent_with_child(tmp_path)
    before = folder_digests(tmp_path)
    result = cli("resize", parent, "50M", "--force")
    assert_clean_error(result, 1)
    assert "c.vhd" in result.stderr and "merge" in result.stderr
    assert folder_digests(tmp_path) == before
    assert cli("resize", parent, "+16M").returncode == 0  # growing keeps what the child reads
    with vhdtool.open(child) as img:
        assert img.pread(90 * MiB, 4096) == b"\x33" * 4096


def test_children_in_another_folder_are_found_with_children(tmp_path: Path) -> None:
    parent = tmp_path / "p.vhd"
    vhdtool.create(parent, size=100 * MiB)
    (tmp_path / "kids").mkdir()
    vhdtool.create(tmp_path / "kids" / "c.vhd", parent=parent)
    result = cli("resize", parent, "50M", "--force", "--children", tmp_path / "kids")
    assert_clean_error(result, 1)
    assert cli("resize", parent, "50M", "--force").returncode == 0  # not looked for there: the user's call


def test_unsafe_rebase_of_a_disk_with_children_is_refused(tmp_path: Path) -> None:
    _parent, child = _parent_with_child(tmp_path)
    grandchild, other = tmp_path / "g.vhd", tmp_path / "o.vhd"
    vhdtool.create(grandchild, parent=child)
    vhdtool.create(other, size=100 * MiB)
    before = folder_digests(tmp_path)
    result = cli("rebase", "--unsafe", child, "--parent", other)
    assert_clean_error(result, 1)
    assert "g.vhd" in result.stderr and folder_digests(tmp_path) == before
    expected = read_all(grandchild)
    assert cli("rebase", child, "--parent", other).returncode == 0  # safe mode keeps what they read
    assert read_all(grandchild) == expected


def test_check_reports_a_parent_shrunk_under_its_child(tmp_path: Path) -> None:
    parent, kids = tmp_path / "p.vhd", tmp_path / "kids"
    kids.mkdir()
    child = kids / "c.vhd"  # not beside the parent: resize does not see it (no --children)
    vhdtool.create(parent, size=100 * MiB)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x33 90M 1M", parent)
    vhdtool.create(child, parent=parent)
    assert cli("resize", parent, "50M", "--force").returncode == 0
    os.utime(parent, (1_000_000_000, 1_000_000_000))  # a changed time stamp, whatever the clock
    result = cli("check", child)
    assert result.returncode == 2
    assert "its parent only" in result.stdout and "shrunk" in result.stdout
    before = folder_digests(kids)
    assert_clean_error(cli("compact", child), 1)  # a broken link to the parent: read-only too
    assert folder_digests(kids) == before


@pytest.mark.parametrize("args", [["--size", "-1G"], ["--size", "+1G"], ["--size", "1G", "--block-size", "-512K"]])
def test_create_refuses_signed_sizes(tmp_path: Path, args: list[str]) -> None:
    result = cli("create", *args, tmp_path / "n.vhd")
    assert_clean_error(result, 64)
    assert "has a sign" in result.stderr and not (tmp_path / "n.vhd").exists()


def test_reset_id_refuses_a_stale_footer_copy(tmp_path: Path) -> None:
    """Found by the safety campaign: with the copy at offset 0 left from an interrupted resize,
    reset-id wrote the footer over it and qemu then read another size; it refuses now, and runs
    once repair has aligned the copy (and said so)."""
    path = tmp_path / "d.vhd"
    vhdtool.create(path, size=20 * MiB)
    old_copy = path.read_bytes()[:512]
    resize(path, 64 * MiB)
    with open(path, "r+b") as f:
        f.write(old_copy)
    before = digest(path)
    result = cli("reset-id", path)
    assert_clean_error(result, 1)
    assert "run 'vhdtool repair' first" in result.stderr and digest(path) == before
    assert cli("repair", path).returncode == 0
    assert cli("reset-id", path).returncode == 0
