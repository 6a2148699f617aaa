"""The server's life: signals flush and keep the undo disk; kill -9 leaves a stale mount that
--list shows and umount cleans; a foreign umount stops the server; busy mounts and undecided
undo disks change nothing; a locked image is refused; --foreground and the Python API."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, assert_clean_error, digest, need, run
from tests.helpers import vhdtool as cli
from tests.mount import peers
from tests.mount.conftest import ok
from vhdtool.mount import registry, system


def server_pid(mnt: Path) -> int:
    record = registry.load(str(mnt))
    assert record is not None
    return record.server_pid


def wait_exit(pid: int, timeout: float = 60.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        fd = os.pidfd_open(pid)
        try:
            assert select.select([fd], [], [], timeout)[0], f"pid {pid} still runs"
        finally:
            os.close(fd)


def leftovers(mnt: Path, runtime: Path) -> list[str]:
    """Mounts at the mountpoint or in the runtime folder, and loop devices serving files there."""
    found = [
        m.mountpoint for m in system.mount_table() if m.mountpoint == str(mnt) or m.mountpoint.startswith(str(runtime))
    ]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().startswith(str(runtime)):
                found.append(backing.parent.parent.name)
    return found


def recovered(image: Path, tmp_path: Path) -> Path:
    """A raw copy whose ext4 journal has been replayed by e2fsck (what a crash leaves to do)."""
    raw = peers.to_raw(image, tmp_path / "recovered.raw")
    subprocess.run([need("e2fsck"), "-fy", raw], capture_output=True)
    return raw


@pytest.mark.parametrize(("driver", "signum"), [("kernel", signal.SIGTERM), ("fuse", signal.SIGINT)])
def test_signal_flushes_and_keeps_the_undo_disk(
    driver: str, signum: int, image_of, mnt: Path, tmp_path: Path, runtime_dir: Path
) -> None:
    image = image_of("ext4")
    ok("mount", "--driver", driver, image, mnt)
    with open(mnt / "fsynced.txt", "w") as f:  # fsync works through each driver
        f.write("fsynced\n")
        f.flush()
        os.fsync(f.fileno())
    (mnt / "note.txt").write_text("written before the signal\n")  # no sync: stopping must write it
    pid = server_pid(mnt)
    os.kill(pid, signum)
    wait_exit(pid)
    assert leftovers(mnt, runtime_dir) == []
    record = registry.load(str(mnt))
    assert record is not None and registry.status(record) == registry.STOPPED
    undo = Path(f"{image}.undo.vhd")
    assert undo.exists()
    assert cli("check", undo).returncode == 0
    listed = json.loads(ok("mount", "--list", "--json").stdout)
    assert [(m["mountpoint"], m["state"]) for m in listed] == [(str(mnt), "stopped")]

    ok("umount", "--commit", mnt)
    raw = peers.to_raw(image, tmp_path / "image.raw")
    assert peers.cat("ext4", raw, "/note.txt") == b"written before the signal\n"
    assert peers.cat("ext4", raw, "/fsynced.txt") == b"fsynced\n"
    assert peers.fsck_clean("ext4", raw)[0]


@pytest.mark.parametrize("fs", ["ext4", "fat32"])
def test_kill_9_leaves_a_stale_mount_that_umount_cleans(
    fs: str, image_of, mnt: Path, tmp_path: Path, runtime_dir: Path
) -> None:
    image = image_of(fs)
    ok("mount", image, mnt)
    with open(mnt / "synced.txt", "w") as f:  # sync(2) does not reach a FUSE program's buffers; fsync does
        f.write("synced\n")
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    # and the kernel's cache of the view under a FUSE program reaches the server on its own
    # writeback (or an fsync of the view, done here): sync(2) does not wait for FUSE writeback
    record = registry.load(str(mnt))
    assert record is not None and record.raw_dir != str(mnt)
    view = os.open(Path(record.raw_dir) / "disk", os.O_RDONLY)
    os.fsync(view)
    os.close(view)
    pid = record.server_pid
    os.kill(pid, signal.SIGKILL)
    wait_exit(pid)
    listed = json.loads(ok("mount", "--list", "--json").stdout)
    assert [m["state"] for m in listed] == ["stale"]
    assert leftovers(mnt, runtime_dir) != []  # dead mounts are still in the table

    done = ok("umount", "--commit", mnt)
    assert "mount server had died" in done.stderr
    assert system.wait_until(lambda: leftovers(mnt, runtime_dir) == [], 10.0), leftovers(mnt, runtime_dir)
    assert registry.records() == []
    raw = recovered(image, tmp_path) if fs == "ext4" else peers.to_raw(image, tmp_path / "image.raw")
    assert peers.cat(fs, raw, "/synced.txt") == b"synced\n"


@pytest.mark.parametrize("raw", [False, True])
def test_another_tools_umount_stops_the_server(raw: bool, image_of, mnt: Path, runtime_dir: Path) -> None:
    image = image_of("ext4")
    before = digest(image)
    ok("mount", *(["--raw"] if raw else []), image, mnt)
    pid = server_pid(mnt)
    run(need("umount"), mnt)
    wait_exit(pid)
    assert leftovers(mnt, runtime_dir) == []
    record = registry.load(str(mnt))
    assert record is not None and record.state == registry.STOPPED
    ok("umount", "--discard", mnt)
    assert digest(image) == before


def test_busy_mount_and_undecided_undo_change_nothing(image_of, mnt: Path) -> None:
    image = image_of("ext4")
    ok("mount", image, mnt)
    undecided = subprocess.run([*VHDTOOL, "umount", mnt], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert_clean_error(undecided, 64)
    assert "--commit or --discard" in undecided.stderr
    with open(mnt / "open.txt", "w") as held:
        held.write("held open\n")
        busy = cli("umount", "--commit", mnt)
        assert_clean_error(busy, 1)
        assert "busy" in busy.stderr
    assert system.mounted_at(str(mnt)) is not None
    assert registry.status(registry.load(str(mnt))) == registry.MOUNTED  # type: ignore[arg-type]
    assert (mnt / "open.txt").read_text() == "held open\n"
    ok("umount", "--commit", mnt)


def test_umount_asks_on_a_terminal(image_of, mnt: Path) -> None:
    image = image_of("fat32")
    before = digest(image)
    ok("mount", image, mnt)
    (mnt / "x").write_text("x")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*VHDTOOL, "umount", mnt], stdin=follower, stdout=follower, stderr=follower)
        os.close(follower)
        said = _read_until(leader, b"commit, discard or cancel")
        os.write(leader, b"discard\n")
        said += _read_until(leader, b"discarded the undo disk")
        assert proc.wait(timeout=60) == 0, said
    finally:
        os.close(leader)
    assert digest(image) == before
    assert registry.records() == []


def _read_until(fd: int, wanted: bytes) -> bytes:
    said = b""
    while wanted not in said:
        assert select.select([fd], [], [], 30)[0], said
        said += os.read(fd, 1024)
    return said


@pytest.mark.parametrize("mode", [[], ["--no-undo"], ["--read-only"], ["--raw"]])
def test_an_image_held_for_writing_is_refused(mode: list[str], image_of, mnt: Path) -> None:
    image = image_of("ext4")
    with vhdtool.open(image, writable=True):
        refused = cli("mount", *mode, image, mnt)
    assert_clean_error(refused, 1)
    assert "locked" in refused.stderr
    assert not Path(f"{image}.undo.vhd").exists()
    assert os.listdir(mnt) == [] and system.mounted_at(str(mnt)) is None


def test_foreground_serves_until_interrupted(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    proc = subprocess.Popen(
        [*VHDTOOL, "mount", "--foreground", image, mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("mounted ")
    assert server_pid(mnt) == proc.pid
    (mnt / "fg.txt").write_text("foreground\n")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "undo disk waits" in err and "Traceback" not in err
    ok("umount", "--commit", mnt)
    assert peers.cat("ext4", peers.to_raw(image, tmp_path / "r.raw"), "/fg.txt") == b"foreground\n"


def test_python_api_commits_on_success_and_discards_on_error(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ntfs")
    with vhdtool.mount(image, mnt) as record:
        assert record.fs == "ntfs"
        (mnt / "api.txt").write_text("from python\n")
    assert registry.records() == []
    committed = digest(image)
    with pytest.raises(RuntimeError, match="changed my mind"), vhdtool.mount(image, mnt):
        (mnt / "api.txt").unlink()
        raise RuntimeError("changed my mind")
    assert digest(image) == committed
    assert peers.cat("ntfs", peers.to_raw(image, tmp_path / "r.raw"), "/api.txt") == b"from python\n"
