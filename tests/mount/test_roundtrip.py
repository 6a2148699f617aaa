"""mount → change files → umount --commit / --discard, on ext4, FAT32 and NTFS, checked by the
filesystems' own tools on a qemu-img raw copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import digest, vhdtool
from tests.mount import peers
from tests.mount.conftest import ok

FILESYSTEMS = ["ext4", "fat32", "ntfs"]


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_commit_adds_removes_and_makes_folders(fs: str, image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of(fs)
    blob = os.urandom(3_000_000)
    ok("mount", image, mnt)
    (mnt / "old.txt").write_text("to be deleted\n")
    (mnt / "kept.txt").write_text("kept\n")
    ok("umount", "--commit", mnt)
    assert not Path(f"{image}.undo.vhd").exists()

    ok("mount", image, mnt)
    assert (mnt / "old.txt").read_text() == "to be deleted\n"  # the first commit is what the image reads
    (mnt / "old.txt").unlink()
    (mnt / "dir" / "sub").mkdir(parents=True)
    with open(mnt / "dir" / "sub" / "blob", "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())  # through the kernel, fusefat and ntfs-3g
    shutil.copyfile(__file__, mnt / "dir" / "copied.py")  # FAT has no modes for copy() to set
    ok("umount", "--commit", mnt)

    raw = peers.to_raw(image, tmp_path / "image.raw")
    assert peers.names(fs, raw) >= {"kept.txt", "dir"}
    assert "old.txt" not in peers.names(fs, raw)
    assert peers.names(fs, raw, "/dir") == {"sub", "copied.py"}
    assert peers.cat(fs, raw, "/dir/sub/blob") == blob
    assert peers.cat(fs, raw, "/dir/copied.py") == Path(__file__).read_bytes()
    assert peers.cat(fs, raw, "/kept.txt") == b"kept\n"
    clean, report = peers.fsck_clean(fs, raw)
    assert clean, report


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_discard_leaves_the_image_byte_identical(fs: str, image_of, mnt: Path) -> None:
    image = image_of(fs)
    before = digest(image)
    ok("mount", image, mnt)
    (mnt / "junk").write_bytes(os.urandom(500_000))
    (mnt / "folder").mkdir()
    assert Path(f"{image}.undo.vhd").stat().st_size > 0  # the writes went somewhere else
    ok("umount", "--discard", mnt)
    assert digest(image) == before
    assert not Path(f"{image}.undo.vhd").exists()
    assert os.listdir(mnt) == []


def test_undo_dir_holds_the_undo_disk(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    undo_dir = tmp_path / "undo"
    undo_dir.mkdir()
    ok("mount", "--undo-dir", undo_dir, image, mnt)
    (mnt / "x").write_text("x\n")
    assert (undo_dir / "ext4.vhd.undo.vhd").exists()
    assert not Path(f"{image}.undo.vhd").exists()
    ok("umount", "--commit", mnt)
    assert list(undo_dir.iterdir()) == []
    assert peers.cat("ext4", peers.to_raw(image, tmp_path / "r.raw"), "/x") == b"x\n"


def test_no_undo_writes_into_the_image(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("fat32")
    ok("mount", "--no-undo", image, mnt)
    (mnt / "direct.txt").write_text("direct\n")
    assert not Path(f"{image}.undo.vhd").exists()
    refused = vhdtool("umount", "--discard", mnt)
    assert refused.returncode == 64 and "cannot be discarded" in refused.stderr
    ok("umount", mnt)
    raw = peers.to_raw(image, tmp_path / "r.raw")
    assert peers.cat("fat32", raw, "/direct.txt") == b"direct\n"
    assert peers.fsck_clean("fat32", raw)[0]


def test_read_only_changes_nothing(image_of, mnt: Path) -> None:
    image = image_of("ntfs")
    before = digest(image)
    ok("mount", "--read-only", image, mnt)
    with pytest.raises(OSError):
        (mnt / "nope").write_text("x")
    ok("umount", mnt)
    assert digest(image) == before
