"""Fault injection: disk full, EIO from the file, a parent deleted or replaced under an open
child, two writers racing. Each ends with a clear error and an image that is not corrupt."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, get_bat
from tests.helpers import vhdtool as cli
from vhdtool.errors import IoError, LockedError, ParentError
from vhdtool.format.metadata import read_metadata

MiB = 1 << 20


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: room for metadata and a couple of blocks, not for a 16 MiB write."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where))
    try:
        yield where
    finally:
        _umount(where)


def test_disk_full_is_a_clear_error_and_the_image_survives(small_fs: Path) -> None:
    img = small_fs / "d.vhd"
    vhdtool.create(img, size=64 * MiB, block_size=512 * 1024)
    with vhdtool.open(img, writable=True) as image:
        image.pwrite(0, b"A" * MiB)
        image.flush()
        with pytest.raises(IoError, match="No space left"):
            for offset in range(MiB, 64 * MiB, MiB):
                image.pwrite(offset, b"B" * MiB)
        image.flush()
    assert cli("check", img).returncode in (0, 3)
    with vhdtool.open(img) as image:
        assert image.pread(0, MiB) == b"A" * MiB
    # the CLI says so in one line too, and leaves no partial output behind
    result = cli("convert", "-O", "vhd", "--type", "fixed", img, small_fs / "copy.vhd")
    assert_clean_error(result)
    assert not (small_fs / "copy.vhd").exists()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing folder, FUSE mount of it whose files fail on command)."""
    backing, mnt = tmp_path / "backing", tmp_path / "faulty"
    backing.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tests.campaigns.faultyfs", str(backing), str(mnt)])
    for _ in range(100):
        if os.path.ismount(mnt):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the fault-injecting FUSE file system did not mount")
    try:
        yield backing, mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(timeout=10)


def test_eio_from_the_file(faulty: tuple[Path, Path]) -> None:
    backing, mnt = faulty
    vhdtool.create(backing / "d.vhd", size=16 * MiB, block_size=512 * 1024)
    switch = backing / ".fail"
    with vhdtool.open(mnt / "d.vhd", writable=True) as image:
        image.pwrite(0, b"good" * 1000)
        image.flush()
        switch.write_text("read")
        with pytest.raises(IoError, match="read failed"):
            image.pread(0, 4000)
        switch.write_text("write")
        with pytest.raises(IoError):
            image.pwrite(5 * MiB, b"lost" * 1000)
            image.flush()
        switch.write_text("")
    result = cli("info", mnt / "d.vhd")
    assert result.returncode == 0
    switch.write_text("read")
    assert_clean_error(cli("info", mnt / "d.vhd"))
    assert_clean_error(cli("check", mnt / "d.vhd"))
    switch.write_text("")
    assert cli("check", mnt / "d.vhd").returncode in (0, 3)
    with vhdtool.open(mnt / "d.vhd") as image:
        assert image.pread(0, 4000) == b"good" * 1000


def test_parent_deleted_or_replaced_under_an_open_child(tmp_path: Path) -> None:
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    vhdtool.create(parent, size=8 * MiB)
    with vhdtool.open(parent, writable=True) as p:
        p.pwrite(0, b"P" * MiB)
    vhdtool.create(child, parent=parent)
    with vhdtool.open(child, writable=True) as c:
        os.unlink(parent)  # the open chain keeps reading the file it opened
        assert c.pread(0, MiB) == b"P" * MiB
        vhdtool.create(parent, size=8 * MiB)  # a different disk under the old name
        c.pwrite(100, b"child")
        assert c.pread(0, 200) == b"P" * 100 + b"child" + b"P" * 95
        c.flush()
    with pytest.raises(ParentError, match="UUID"):
        vhdtool.open(child)
    refused = cli("info", child)  # a wrong parent is not a missing one: an error naming the mismatch
    assert_clean_error(refused, 1)
    assert "UUID mismatch" in refused.stderr
    assert cli("check", child).returncode == 2  # the chain is broken, and check says so


WRITER = """
import sys, time, vhdtool
try:
    with vhdtool.open(sys.argv[1], writable=True) as img:
        print("open", flush=True)
        for i in range(200):
            img.pwrite(i * 4096, bytes([int(sys.argv[2])]) * 4096)
        img.flush()
        time.sleep(0.5)
except vhdtool.VhdError as e:
    print("refused", e, flush=True)
"""


def test_two_writers_racing(tmp_path: Path) -> None:
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=8 * MiB)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(img), str(v)], stdout=subprocess.PIPE, text=True)
        for v in (1, 2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    opened = [o for o in outs if o.startswith("open")]
    refused = [o for o in outs if o.startswith("refused")]
    assert len(opened) == 1 and len(refused) == 1, outs
    assert "in use" in refused[0]
    value = 1 if outs[0].startswith("open") else 2
    with vhdtool.open(img) as image:
        assert image.pread(0, 200 * 4096) == bytes([value]) * (200 * 4096)
    assert cli("check", img).returncode == 0
    with vhdtool.open(img, writable=True), pytest.raises(LockedError):
        vhdtool.open(img, writable=True)


TRUNCATING_CONVERT = """
import os, sys
from vhdtool.errors import VhdError
from vhdtool.ops.convert import convert
src, dst, fmt = sys.argv[1:]
cut = []
def progress(done, total):
    if done and not cut:  # after the first piece: another process cuts the source to 1 MiB
        os.truncate(src, 1 << 20)
        cut.append(done)
try:
    convert(src, dst, output_format=fmt, progress=progress)
except VhdError as e:
    print("vhdtool: error:", e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


@pytest.mark.parametrize("source, output", [("raw", "vhd"), ("vhd", "raw")])
def test_source_truncated_during_convert(tmp_path: Path, source: str, output: str) -> None:
    """The source shrinks while convert copies it: pieces scanned after the cut (the workers run a
    few pieces ahead, so the cut comes before the ninth) lie past the new end. This used to kill
    the process with SIGBUS (zero checks in a memory map of the source)."""
    src = tmp_path / f"src.{source}"
    if source == "raw":
        with open(src, "wb") as f:
            f.write(b"\x5a" * (40 * MiB))
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(src), "48M"], check=True)
        subprocess.run(["qemu-io", "-f", "vpc", "-c", "write -P 0x5a 0 40M", str(src)], check=True, capture_output=True)
    dst = tmp_path / f"out.{output}"
    result = subprocess.run(
        [sys.executable, "-c", TRUNCATING_CONVERT, str(src), str(dst), output], capture_output=True, text=True
    )
    assert result.returncode == 1, (result.returncode, result.stderr)  # not -SIGBUS, not a traceback
    assert_clean_error(result)
    assert "changed" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no destination, no temporary file


def test_raw_file_truncated_under_an_open_reader(tmp_path: Path) -> None:
    """A raw disk shrunk by another process reads as an error, not as zeros it never held."""
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x5a" * (1 << 20))
    with vhdtool.RawFile(str(path)) as disk:
        assert disk.pread(0, 4096) == b"\x5a" * 4096
        os.truncate(path, 4096)
        assert disk.pread(0, 4096) == b"\x5a" * 4096  # what is still there still reads
        with pytest.raises(IoError, match="shrank to 4096 bytes"):
            disk.pread(0, 8192)


def test_eio_from_the_source_during_convert_names_the_source(faulty: tuple[Path, Path]) -> None:
    """A bad sector in the source must be reported as the source's read error, not as the
    output's write error. Source and output share the FUSE file system."""
    from vhdtool.ops.convert import convert

    backing, mnt = faulty
    vhdtool.create(backing / "d.vhd", size=8 * MiB, block_size=512 * 1024)
    with vhdtool.open(backing / "d.vhd", writable=True) as image:
        image.pwrite(0, b"\x77" * (4 * MiB))
    with vhdtool.open(mnt / "d.vhd") as source:
        # a bad spot 384 KiB into the first block's data: the block bitmaps, the first page of each
        # piece (read to check for zeros) and what read-ahead fetches with them all still read
        bad = get_bat(backing / "d.vhd", 0) * 512 + 512 + 384 * 1024
        (backing / ".fail").write_text(f"read-range {bad} {bad + 4096}")
        try:
            with pytest.raises(IoError, match=r"d\.vhd: read failed") as caught:
                convert(source, mnt / "out.raw", output_format="raw")
        finally:
            (backing / ".fail").write_text("")
    assert "out.raw" not in str(caught.value)
    assert sorted(p.name for p in backing.iterdir()) == [".fail", "d.vhd"]  # no output, no temporary file


def test_convert_onto_a_file_system_without_fallocate(faulty: tuple[Path, Path], tmp_path: Path) -> None:
    """The FUSE file system implements no fallocate: convert writes its pieces without allocating
    them first, and the output holds every byte."""
    from vhdtool.format.fallocate import allocate
    from vhdtool.ops.convert import convert

    backing, mnt = faulty
    with open(mnt / "probe", "wb") as f:
        assert not allocate(f.fileno(), 0, MiB)
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(5 * MiB + 4096))
    convert(src, mnt / "out.raw", output_format="raw")
    assert (backing / "out.raw").read_bytes() == src.read_bytes()


def _fill(folder: Path) -> None:
    """Take the rest of the filesystem's room (the file stays, so the room stays taken)."""
    with open(folder / "fill", "wb", buffering=0) as f:
        for piece in (MiB, 4096, 512):
            with contextlib.suppress(OSError):
                while f.write(bytes(piece)):
                    pass


def test_full_disk_resize_and_repair_name_the_file_and_leave_nothing(small_fs: Path) -> None:
    img = small_fs / "d.vhd"
    vhdtool.create(img, size=4 * MiB, block_size=512 * 1024)
    with vhdtool.open(img, writable=True) as image:
        for i in range(8):
            image.pwrite(i * 512 * 1024, bytes([i + 1]) * 4096)
    meta = read_metadata(img)
    assert meta.header is not None
    with open(img, "r+b") as f:  # block 5 forgotten by the BAT: a leak for repair to reclaim
        f.seek(int(meta.header.table_offset) + 4 * 5)
        f.write(b"\xff" * 4)
    _fill(small_fs)
    size_before = img.stat().st_size
    grown = cli("resize", img, "8G")  # the BAT must grow: blocks move to the end, which is full
    assert_clean_error(grown, 1)
    assert f"{img}: resize stopped" in grown.stderr and "No space left on device" in grown.stderr
    assert img.stat().st_size == size_before  # the room taken for the moved blocks was given back
    assert cli("check", img).returncode == 3  # only the leak made above
    repaired = cli("repair", img)
    assert_clean_error(repaired, 1)
    assert f"{img}.repair-backup" in repaired.stderr and "No space left on device" in repaired.stderr
    assert sorted(p.name for p in small_fs.iterdir()) == ["d.vhd", "fill"]  # no empty backup
    (small_fs / "fill").unlink()
    assert cli("repair", img).returncode == 0
    assert sorted(p.name for p in small_fs.iterdir()) == ["d.vhd", "d.vhd.repair-backup"]


def test_full_host_disk_in_build_is_not_blamed_on_the_filesystem_size(small_fs: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(2 * MiB))
    _fill(small_fs)
    done = cli("build", small_fs / "o.vhd", "--from-dir", tree, "--fs", "ext4", "--table", "none", "--size", "32M")
    assert_clean_error(done, 1)
    assert "host filesystem is full" in done.stderr
    assert sorted(p.name for p in small_fs.iterdir()) == ["fill"]
