"""Bad requests: one error line, the right exit code, and nothing changed (no undo disk, no
registry record, the mountpoint empty and unmounted, the image byte-identical)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, digest, need, run, vhdtool
from tests.mount import peers
from tests.mount.conftest import ok
from vhdtool.mount import drivers, registry, system


def refused(*args: str | os.PathLike[str], code: int, says: str) -> None:
    done = vhdtool(*args)
    assert_clean_error(done, code)
    assert says in done.stderr, done.stderr


def assert_untouched(image: Path, before: str, mnt: Path) -> None:
    assert digest(image) == before
    assert not Path(f"{image}.undo.vhd").exists()
    assert registry.records() == []
    assert os.listdir(mnt) == [] and system.mounted_at(str(mnt)) is None


def test_bad_mountpoints_and_images(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    before = digest(image)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / "random.vhd").write_bytes(os.urandom(4096))
    refused("mount", image, tmp_path / "full", code=64, says="not empty")
    refused("mount", image, tmp_path / "file", code=64, says="not a folder")
    refused("mount", image, tmp_path / "missing", code=64, says="not a folder")
    refused("mount", tmp_path / "missing.vhd", mnt, code=1, says="missing.vhd")
    refused("mount", tmp_path / "random.vhd", mnt, code=1, says="random.vhd")
    refused("mount", "--partition", "2", image, mnt, code=64, says="no partition 2 (partitions: 1)")
    refused("mount", "--raw", "--partition", "1", image, mnt, code=64, says="--partition")
    refused("mount", "--read-only", "--no-undo", image, mnt, code=64, says="--no-undo")
    refused("mount", image, code=64, says="IMAGE and MOUNTPOINT")
    refused("umount", "--commit", mnt, code=64, says="not mounted by vhdtool")
    assert_untouched(image, before, mnt)


def test_a_disk_without_a_filesystem(mnt: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.vhd"
    ok("create", "--size", "16M", blank)
    before = digest(blank)
    refused("mount", blank, mnt, code=1, says="no supported filesystem")
    assert_untouched(blank, before, mnt)


@pytest.mark.parametrize(("driver", "says"), [("kernel", "kernel mount of ext4 failed"), ("fuse", "fuse2fs failed")])
def test_a_filesystem_its_driver_refuses(driver: str, says: str, image_of, mnt: Path) -> None:
    image = image_of("ext4")
    ok("mount", "--raw", "--no-undo", image, mnt)
    with open(mnt / "disk", "r+b") as f:  # s_blocks_per_group = 0: the magic still says ext4
        f.seek(1024 + 0x20)
        f.write(bytes(4))
    ok("umount", mnt)
    before = digest(image)
    refused("mount", "--driver", driver, image, mnt, code=1, says=says)  # after the raw view was up
    assert_untouched(image, before, mnt)


def test_fuse_library_missing_fails_cleanly(image_of, mnt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = image_of("ext4")
    before = digest(image)
    monkeypatch.setenv("FUSE_LIBRARY_PATH", "/nonexistent/libfuse3.so.3")
    refused("mount", image, mnt, code=1, says="FUSE is not available")  # reported by the server, after it started
    assert_untouched(image, before, mnt)


def test_one_mount_per_mountpoint_and_per_undo_disk(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    other = tmp_path / "other"
    other.mkdir()
    ok("mount", image, mnt)
    refused("mount", image, mnt, code=64, says="vhdtool has a mount there already")
    refused("mount", image, other, code=64, says=f"undo disk of the mount at {mnt} is pending")
    ok("umount", "--discard", mnt)
    assert os.listdir(other) == []


def test_fat16_is_never_written_by_fusefat(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("fat16")
    before = digest(image)
    if "vfat" in drivers.kernel_filesystems():  # a kernel with vfat mounts it read-write itself
        ok("mount", image, mnt)
        (mnt / "k.txt").write_text("kernel\n")
        ok("umount", "--commit", mnt)
        raw = peers.to_raw(image, tmp_path / "r.raw")
        assert peers.cat("fat16", raw, "/k.txt") == b"kernel\n"
        return
    refused("mount", image, mnt, code=64, says="fusefat corrupts FAT16")
    refused("mount", "--driver", "fuse", image, mnt, code=64, says="fusefat corrupts FAT16")
    refused("mount", "--driver", "kernel", image, mnt, code=64, says="no vfat driver")
    assert_untouched(image, before, mnt)
    ok("mount", "--read-only", image, mnt)
    assert os.listdir(mnt) == []
    ok("umount", mnt)
    assert_untouched(image, before, mnt)
    raw = peers.to_raw(image, tmp_path / "r.raw")
    assert peers.fsck_clean("fat16", raw)[0]
    run(need("mdir"), "-i", raw, "::/", env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
