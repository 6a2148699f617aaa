"""An interrupted `vhdtool cp` into an image leaves the old filesystem or the new one.

The command is stopped by SIGKILL or SIGINT at several moments of its run; whatever the moment,
e2fsck must find the filesystem clean and debugfs must read the copied file either absent or
whole (both peers read a raw copy made by qemu-img, not vhdtool). Later runs remove what the
killed ones left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import VHDTOOL, digest, need, run, sha256_of
from tests.helpers import vhdtool as cli

MiB = 1 << 20


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cp-base")
    (folder / "src").mkdir()
    (folder / "src" / "a.txt").write_text("hello\n")
    image = folder / "fs.vhd"
    done = cli("build", image, "--from-dir", folder / "src", "--fs", "ext4", "--table", "none", "--size", "128M")
    assert done.returncode == 0, done.stderr
    return image


def _state(image: Path, tmp: Path, want: str) -> str:
    """'old' or 'new' for a clean filesystem without or with the whole file; else an assertion."""
    raw = tmp / "check.raw"
    run(need("qemu-img"), "convert", "-f", "vpc", "-O", "raw", image, raw)
    try:
        fsck = run(need("e2fsck"), "-fn", raw, check=False)
        assert fsck.returncode == 0, fsck.stdout
        got = subprocess.run([need("debugfs"), "-R", "cat /big.bin", str(raw)], capture_output=True).stdout
    finally:
        raw.unlink()
    if sha256_of(got) == want:
        return "new"
    assert got == b"", "a torn /big.bin"
    return "old"


STOPS = [(signal.SIGKILL, (0.3, 0.8, 1.2, 1.8, 2.5)), (signal.SIGINT, (0.6, 1.5))]


@pytest.mark.parametrize(("signum", "delays"), STOPS)
def test_an_interrupted_cp_leaves_old_or_new(
    base: Path, tmp_path: Path, signum: int, delays: tuple[float, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "t"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * MiB))
    want = digest(big)
    seen = []
    for delay in delays:
        image = tmp_path / "c.vhd"
        shutil.copyfile(base, image)
        proc = subprocess.Popen(
            [*VHDTOOL, "cp", str(big), f"{image}:/big.bin"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        seen.append(_state(image, tmp_path, want))
        if signum == signal.SIGINT:  # a stopped command cleans up after itself
            assert os.listdir(temp) == []
            assert sorted(os.listdir(tmp_path)) == ["big.bin", "c.vhd", "t"]
    # the next run removes what the killed ones left, and completes
    assert cli("cp", big, f"{image}:/big.bin").returncode == 0
    assert _state(image, tmp_path, want) == "new"
    assert os.listdir(temp) == []
    assert sorted(os.listdir(tmp_path)) == ["big.bin", "c.vhd", "t"]
    print(signum, delays, seen)
