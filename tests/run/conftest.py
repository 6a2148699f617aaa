"""Fixtures for the runner tests: the cached test guest, a private state folder, images built by
`vhdtool build` from small root folders, and checks that a run left nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import VHDTOOL, need

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from fixtures.guest import Guest, ensure_guest, make_root  # noqa: E402


@pytest.fixture(scope="session")
def guest() -> Guest:
    need("qemu-system-x86_64")
    return ensure_guest()


@dataclass
class Env:
    """A private state folder and TMPDIR for the runs of one test."""

    tmp: Path
    state: Path
    scratch: Path

    @property
    def vars(self) -> dict[str, str]:
        return {**os.environ, "VHDTOOL_STATE_DIR": str(self.state), "TMPDIR": str(self.scratch)}

    def vhdtool(self, *args: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", self.vars)
        kw.setdefault("timeout", 300)
        return subprocess.run([*VHDTOOL, *map(os.fspath, args)], capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def popen(self, *args: str | os.PathLike[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*VHDTOOL, *map(os.fspath, args)], env=self.vars, **kw)  # type: ignore[call-overload]

    def boot_args(self, guest: Guest, root: str = "/dev/vda") -> list[str]:
        return ["--kernel", str(guest.kernel), "--initrd", str(guest.initrd), "--append",
                f"console=ttyS0 root={root} panic=-1 quiet"]  # fmt: skip

    def assert_nothing_left(self) -> None:
        """No state entry, socket or scratch file, and no QEMU of this test still running."""
        if self.state.exists():
            assert sorted(p.name for p in self.state.iterdir()) == []
        assert list(self.scratch.iterdir()) == []
        end = time.monotonic() + 10  # QEMU is reaped before the runner exits; allow for slow /proc
        while _processes_mentioning(str(self.tmp)) and time.monotonic() < end:
            time.sleep(0.1)
        assert _processes_mentioning(str(self.tmp)) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and text in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, tmp_path / "state", tmp_path / "scratch")
    e.scratch.mkdir()
    yield e


def build_root_image(env: Env, name: str, script: str, files: dict[str, str] | None = None) -> Path:
    """A VHD (ext4, no partition table: the guest's /dev/vda) whose /sbin/init runs ``script``."""
    root = env.tmp / f"{name}-root"
    make_root(root, script)
    for path, text in (files or {}).items():
        (root / path).write_text(text)
    image = env.tmp / f"{name}.vhd"
    built = env.vhdtool("build", image, "--from-dir", root, "--table", "none")
    assert built.returncode == 0, built.stderr
    return image
