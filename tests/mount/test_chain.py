"""A differencing image mounted, changed and committed: its parent stays byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.mount import peers
from tests.mount.conftest import ok


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
