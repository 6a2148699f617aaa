"""A differencing image mounted, changed and committed: its parent stays byte-identical."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import assert_clean_error, digest, vhdtool
from tests.mount import peers
from tests.mount.conftest import ok


def test_child_commit_and_no_undo_leave_the_parent_untouched(image_of, mnt: Path, tmp_path: Path) -> None:
    parent = image_of("ext4")
    child = tmp_path / "child.vhd"
    ok("create", "--parent", parent, child)
    before = digest(parent)

    ok("mount", child, mnt)
    (mnt / "only-in-child").write_text("child\n")
    ok("umount", "--commit", mnt)
    ok("mount", "--no-undo", child, mnt)
    (mnt / "direct-in-child").write_text("direct\n")
    ok("umount", mnt)
    assert digest(parent) == before

    # qemu's vpc driver reads a differencing disk without its parent: flatten with vhdtool first
    flat = tmp_path / "child.raw"
    ok("convert", "-O", "raw", child, flat)
    assert peers.cat("ext4", flat, "/only-in-child") == b"child\n"
    assert peers.cat("ext4", flat, "/direct-in-child") == b"direct\n"
    assert peers.fsck_clean("ext4", flat)[0]
    base = peers.to_raw(parent, tmp_path / "parent.raw")
    assert {"only-in-child", "direct-in-child"}.isdisjoint(peers.names("ext4", base))


def test_commit_into_a_parent_of_other_disks_is_refused(image_of, mnt: Path, tmp_path: Path) -> None:
    base = image_of("ext4")
    ok("create", "--parent", base, tmp_path / "sibling.vhd")  # another disk that reads the base
    before = digest(base)
    ok("mount", base, mnt)
    (mnt / "x").write_text("x\n")
    refused = vhdtool("umount", "--commit", mnt)
    assert_clean_error(refused, 1)  # refused for safety, not a usage error
    assert "is kept" in refused.stderr and "sibling.vhd" in refused.stderr
    assert digest(base) == before
    assert Path(f"{base}.undo.vhd").exists()
    ok("umount", "--discard", mnt)
    assert digest(base) == before and not Path(f"{base}.undo.vhd").exists()
