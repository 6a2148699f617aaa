"""An interrupted commit, and writes that failed during the mount: the undo disk's answers.

Real mounts (root, /dev/fuse, a loop-mounted small filesystem for the undo folder); the image's
filesystem is judged by e2fsck and debugfs on a raw copy made by qemu-img.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.helpers import VHDTOOL, digest, need, run, sha256_of
from tests.helpers import vhdtool as cli
from tests.mount import peers
from tests.mount.conftest import ok
from vhdtool.mount import registry

MiB = 1 << 20


def _clean_with(image: Path, tmp_path: Path, name: str) -> bytes:
    """The content of /NAME in a filesystem e2fsck finds clean (b'' when absent)."""
    raw = peers.to_raw(image, tmp_path / "check.raw")
    try:
        fsck = run(need("e2fsck"), "-fn", raw, check=False)
        assert fsck.returncode == 0, fsck.stdout
        return subprocess.run([need("debugfs"), "-R", f"cat /{name}", str(raw)], capture_output=True).stdout
    finally:
        raw.unlink()


def test_discard_after_an_interrupted_commit_refuses(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    ok("mount", image, mnt)
    data = os.urandom(24 * MiB)
    (mnt / "big.bin").write_bytes(data)
    record = registry.load(str(mnt))
    assert record is not None and record.undo is not None
    undo = Path(record.undo)
    mark = Path(f"{undo}.committing")
    commit = subprocess.Popen([*VHDTOOL, "umount", "--commit", "-q", str(mnt)])
    while not mark.exists():  # killed once the commit has begun
        assert commit.poll() is None, "the commit finished before it could be interrupted"
        time.sleep(0.005)
    commit.kill()
    commit.wait()
    refused = cli("umount", "--discard", mnt)
    assert refused.returncode == 1, refused
    assert "--commit" in refused.stderr and "interrupted" in refused.stderr
    assert undo.exists() and mark.exists()
    ok("umount", "--commit", mnt)
    assert not undo.exists() and not mark.exists()
    assert sha256_of(_clean_with(image, tmp_path, "big.bin")) == sha256_of(data)


def test_an_umount_repeated_after_a_finished_commit_says_so(image_of, mnt: Path, tmp_path: Path) -> None:
    """A script whose umount --commit was killed cannot tell whether the commit had finished: run
    again, it is told so (exit 0); a discard then is refused, naming the commit."""
    image = image_of("ext4")
    ok("mount", image, mnt)
    (mnt / "kept.txt").write_text("kept\n")
    ok("umount", "--commit", mnt)
    before = digest(image)
    again = cli("umount", "--commit", mnt)
    assert again.returncode == 0 and "already unmounted" in again.stdout, again
    refused = cli("umount", "--discard", mnt)
    assert refused.returncode == 1 and "already committed into" in refused.stderr, refused
    assert digest(image) == before
    assert _clean_with(image, tmp_path, "kept.txt") == b"kept\n"
    ok("mount", image, mnt)  # a new mount there is a mount like any other
    assert cli("umount", "--commit", mnt).stdout.startswith("unmounted")


def test_failed_writes_are_reported_and_not_committed(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    before = image.read_bytes()
    small, folder = tmp_path / "small.img", tmp_path / "small"
    folder.mkdir()
    with open(small, "wb") as f:
        f.truncate(12 * MiB)
    run(need("mkfs.ext4"), "-q", small)
    run("mount", "-o", "loop", small, folder)
    try:
        ok("mount", "--undo-dir", folder, image, mnt)
        try:
            (mnt / "big.bin").write_bytes(os.urandom(40 * MiB))
            os.sync()
        except OSError:
            pass  # the kernel may already report the failure to the writer
        done = cli("umount", "--commit", mnt)
        assert done.returncode == 1, done
        assert "failed" in done.stderr and "No space left on device" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert image.read_bytes() == before  # nothing committed
        assert any(folder.glob("*.vhd"))  # the undo disk is kept
        ok("umount", "--discard", mnt)
        assert image.read_bytes() == before
    finally:
        run("umount", folder, check=False)
