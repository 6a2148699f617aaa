"""Readers and writers of one image across processes, and the temporary files of killed commands.

The other process is a real one (a `vhdtool serve --read-only` or a Python process holding the
image open); the lock is the kernel's flock, so nothing here is simulated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, assert_clean_error, digest
from tests.helpers import vhdtool as cli
from vhdtool.errors import LockedError

MiB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.vhd"
    vhdtool.create(path, size=64 * MiB)
    with vhdtool.open(path, writable=True) as img:
        for i in range(8):
            img.pwrite(i * 4 * MiB, bytes([i + 1]) * 4096)
    return path


def _holder(path: Path, writable: bool) -> subprocess.Popen[str]:
    """A process that opens ``path`` (read-only or for writing), says so, and waits."""
    code = (
        "import sys, vhdtool\n"
        f"img = vhdtool.open(sys.argv[1], writable={writable})\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    return proc


@pytest.fixture
def held() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_reader_keeps_block_movers_and_replacers_out(image: Path, tmp_path: Path, held: list) -> None:
    held.append(_holder(image, writable=False))
    before = digest(image)
    for args in (
        ("compact", image),
        ("resize", image, "+64M"),
        ("create", "--force", "--size", "64M", image),
        ("convert", "--force", "-O", "vhd", tmp_path / "src.raw", image),
    ):
        if args[0] == "convert":
            (tmp_path / "src.raw").write_bytes(b"x" * MiB)
        done = cli(*args)
        assert_clean_error(done, 1)
        assert "locked" in done.stderr, done.stderr
    assert digest(image) == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_readers_share_the_image(image: Path, tmp_path: Path, held: list) -> None:
    held.append(_holder(image, writable=False))
    for args in (("info", image), ("map", image), ("compare", image, image), ("check", image)):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert cli("convert", "-O", "raw", image, tmp_path / "out.raw").returncode == 0


def test_a_writer_keeps_readers_out(image: Path, tmp_path: Path, held: list) -> None:
    held.append(_holder(image, writable=True))
    for args in (("convert", "-O", "raw", image, tmp_path / "out.raw"), ("map", image)):
        done = cli(*args)
        assert_clean_error(done, 1)
        assert "open for writing by another process" in done.stderr
    assert not (tmp_path / "out.raw").exists()
    # info describes it anyway (a running guest's disk), and says it read it without the lock
    described = cli("info", "--json", image)
    assert described.returncode == 0 and '"virtual-size": 67108864' in described.stdout, described
    assert "is in use for writing by another process" in described.stdout + described.stderr
    shared = cli("info", "-U", "--json", image)  # qemu-img info -U: read it anyway, no warning
    assert shared.returncode == 0 and '"virtual-size": 67108864' in shared.stdout, shared
    assert "in use for writing" not in shared.stdout + shared.stderr


def test_a_read_only_server_keeps_compact_out(image: Path, tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([*VHDTOOL, "serve", "--read-only", str(image), "--socket", str(sock)])
    try:
        for _ in range(300):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists()
        assert_clean_error(cli("compact", image), 1)
        assert_clean_error(cli("create", "--force", "--size", "64M", image), 1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert cli("compact", image).returncode == 0  # once the reader is gone


def test_one_process_may_read_what_it_writes(image: Path) -> None:
    with vhdtool.open(image, writable=True) as img:
        img.pwrite(0, b"mine")
        img.flush()
        with vhdtool.open(image) as again:
            assert again.pread(0, 4) == b"mine"
        with pytest.raises(LockedError):
            vhdtool.open(image, writable=True)  # a second writer, even in this process


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_owners_are_removed(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(MiB))
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".out.vhd.vhdtool-{dead}.tmp"
    live = tmp_path / f".out.vhd.vhdtool-{alive}.tmp"
    stale_dir = tmp_path / f".out.vhd.vhdtool-{dead}.abc123"
    other = tmp_path / f".other.vhd.vhdtool-{dead}.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"left")
    stale_dir.mkdir()
    (stale_dir / "partition.raw").write_bytes(b"x")
    assert cli("convert", src, tmp_path / "out.vhd").returncode == 0
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()  # a live owner's file, another destination's file


def test_a_killed_convert_leaves_nothing_after_the_next(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(64 * MiB))
    out = tmp_path / "out.vhd"
    proc = subprocess.Popen([*VHDTOOL, "convert", str(src), str(out)])
    for _ in range(500):  # until its temporary file exists
        if any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert cli("convert", "--force", src, out).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["out.vhd", "src.raw"]


def test_stale_volume_extracts_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    stale = tmp_path / "t" / f"vhdtool-volume-{_dead_pid()}-abcd1234.raw"
    stale.write_bytes(b"x")
    image = tmp_path / "fs.vhd"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    assert cli("build", image, "--from-dir", tmp_path / "src", "--fs", "ext4", "--table", "none").returncode == 0
    assert cli("ls", f"{image}:/").returncode == 0
    assert not stale.exists()
    assert os.listdir(tmp_path / "t") == []


def test_build_force_refuses_an_image_in_use(image: Path, tmp_path: Path, held: list) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_text("a")
    held.append(_holder(image, writable=False))
    before = digest(image)
    done = cli("build", "--force", image, "--from-dir", tmp_path / "tree", "--fs", "ext4", "--table", "none")
    assert_clean_error(done, 1)
    assert "locked" in done.stderr
    assert digest(image) == before
    assert sorted(os.listdir(tmp_path)) == ["disk.vhd", "tree"]


def test_a_child_may_be_made_over_a_disk_in_use(image: Path, tmp_path: Path, held: list) -> None:
    """A snapshot layer is made over a running guest's disk; reading through it waits for the writer."""
    held.append(_holder(image, writable=True))
    child = tmp_path / "child.vhd"
    assert cli("create", "--parent", image, child).returncode == 0
    done = cli("info", child)  # described, with a warning that the chain is being written
    assert done.returncode == 0 and "in use for writing by another process" in done.stderr, done
    copied = cli("convert", "-O", "raw", child, tmp_path / "child.raw")  # its data waits for the writer
    assert_clean_error(copied, 1)
    assert "open for writing by another process" in copied.stderr
