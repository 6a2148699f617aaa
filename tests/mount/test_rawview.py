"""The --raw view: its disk file reads what qemu-img reads, its files behave like block devices
(fixed size, O_TRUNC ignored, no writing past the end), and its writes land in the undo disk."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import digest, need, run
from tests.mount.conftest import ok

MiB = 1 << 20


BASE_WRITES = [(3 * MiB + 17, os.urandom(2 * MiB)), (24 * MiB - 700, b"\xab" * 700)]
TOP_WRITES = [(4 * MiB, os.urandom(5000))]


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """A two-deep chain: the base written by qemu-io, the child through vhdtool's format core."""
    base, top = tmp_path / "base.vhd", tmp_path / "top.vhd"
    vhdtool.create(base, size=24 * MiB, block_size=512 * 1024)
    for offset, data in BASE_WRITES:
        pattern = tmp_path / "pattern"
        pattern.write_bytes(data)
        run(need("qemu-io"), "-f", "vpc", "-c", f"write -s {pattern} {offset} {len(data)}", base)
    vhdtool.create(top, parent=base)
    with vhdtool.open(top, writable=True) as img:
        for offset, data in TOP_WRITES:
            img.pwrite(offset, data)
    return top


def test_disk_reads_what_was_written(chain: Path, mnt: Path, tmp_path: Path) -> None:
    expected = bytearray(24 * MiB)
    for offset, data in BASE_WRITES + TOP_WRITES:
        expected[offset : offset + len(data)] = data
    ok("mount", "--raw", "--read-only", chain, mnt)
    assert os.listdir(mnt) == ["disk"]
    with open(mnt / "disk", "rb") as f:
        assert f.read() == expected
        assert os.pread(f.fileno(), 3 * MiB, 2 * MiB + 5) == expected[2 * MiB + 5 : 5 * MiB + 5]
        aligned = mmap.mmap(-1, MiB)  # page-aligned 1 MiB reads, as dd and the loop device make them
        for offset in range(0, len(expected), MiB):
            assert os.preadv(f.fileno(), [aligned], offset) == MiB
            assert aligned[:] == expected[offset : offset + MiB], offset
    ok("umount", mnt)


def test_files_behave_like_block_devices(chain: Path, mnt: Path) -> None:
    before = digest(chain)
    ok("mount", "--raw", chain, mnt)
    disk = mnt / "disk"
    size = disk.stat().st_size
    with open(disk, "r+b") as f:  # an O_TRUNC open ('>' in a shell, dd without conv=notrunc) truncates nothing
        pass
    fd = os.open(disk, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == size
        assert os.pwrite(fd, b"hello", 1000) == 5
        with pytest.raises(OSError) as past_end:
            os.pwrite(fd, b"x", size)
        assert past_end.value.errno == errno.ENOSPC
        assert os.pwrite(fd, b"abcdef", size - 3) == 3  # a write across the end stops at it
        with pytest.raises(OSError) as truncated:
            os.ftruncate(fd, size // 2)
        assert truncated.value.errno == errno.EINVAL
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(disk, "rb") as f:
        assert os.pread(f.fileno(), 5, 1000) == b"hello"
        assert os.pread(f.fileno(), 10, size - 3) == b"abc"
        assert os.pread(f.fileno(), 10, size) == b""  # at and past the end: nothing, no error
        assert os.pread(f.fileno(), 10, size + 4096) == b""
    ok("umount", "--discard", mnt)
    assert digest(chain) == before  # every write went to the undo disk


def test_read_only_view_refuses_writes(chain: Path, mnt: Path) -> None:
    ok("mount", "--raw", "--read-only", chain, mnt)
    with pytest.raises(OSError) as refused:
        os.open(mnt / "disk", os.O_WRONLY)
    assert refused.value.errno == errno.EROFS
    ok("umount", mnt)
