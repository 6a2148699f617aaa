"""Filesystem detection against volumes made by the real mkfs tools, checked against blkid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vhdtool.disk.detect import detect
from vhdtool.format.blockdev import RawFile

MiB = 1 << 20


def blkid(path: Path, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", tag, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    "mkfs, size, fs_type, variant",
    [
        (["mkfs.ext2", "-q", "-L", "two"], 8, "ext2", "ext2"),
        (["mkfs.ext3", "-q", "-L", "three"], 8, "ext3", "ext3"),
        (["mkfs.ext4", "-q", "-L", "four"], 8, "ext4", "ext4"),
        (["mkfs.vfat", "-F", "12", "-n", "TWELVE"], 4, "vfat", "fat12"),
        (["mkfs.vfat", "-F", "16", "-n", "SIXTEEN"], 16, "vfat", "fat16"),
        (["mkfs.vfat", "-F", "32", "-n", "THIRTYTWO"], 40, "vfat", "fat32"),
        (["mkntfs", "-q", "-F", "-Q", "-L", "win"], 8, "ntfs", "ntfs"),
    ],
)
def test_detects_what_mkfs_made(tmp_path: Path, mkfs: list[str], size: int, fs_type: str, variant: str) -> None:
    path = tmp_path / "vol.img"
    with open(path, "wb") as f:
        f.truncate(size * MiB)
    subprocess.run([*mkfs, str(path)], check=True, capture_output=True)
    with RawFile(path) as dev:
        fs = detect(dev)
    assert fs is not None
    assert (fs.type, fs.variant) == (fs_type, variant)
    assert blkid(path, "TYPE") == fs_type
    assert fs.uuid == blkid(path, "UUID")
    if fs_type != "ntfs":  # NTFS keeps its label in $Volume, not in the boot sector
        assert fs.label == blkid(path, "LABEL")
    assert 0 < fs.size <= size * MiB


def test_nothing_detected_on_zeros_and_noise(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(MiB))
    noise = tmp_path / "noise.img"
    noise.write_bytes(bytes(range(256)) * 4096)
    for path in (zeros, noise):
        with RawFile(path) as dev:
            assert detect(dev) is None
