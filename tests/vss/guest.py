"""A running test guest for the snapshot tests and bench: the project's test kernel and
initramfs (fixtures/guest.py), a root filesystem with Debian's qemu-ga and the libraries it
links copied in, and an init that starts the agent and writes ``tick N`` lines both to ``/data``
and to the console every 0.3 s. Booted under ``vhdtool run --agent`` (TCG on these hosts).

qemu-ga runs with a freeze hook that sleeps 5 s before freezing while ``/slow`` exists in the
guest, so a test can make a freeze take long (to time it out, or to kill the coordinator in the
middle of it) by creating that file through the agent (``guest-exec``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import VHDTOOL, need, stop_process

ROOT = Path(__file__).resolve().parents[2]

HOOK = """#!/bin/busybox sh
[ "$1" = freeze ] && [ -e /slow ] && /bin/busybox sleep 5
exit 0
"""

INIT = (
    "/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null; /bin/busybox mount -t sysfs sys /sys; "
    "for p in /sys/class/virtio-ports/*; do "
    '[ "$(/bin/busybox cat $p/name)" = org.qemu.guest_agent.0 ] && ga=/dev/${p##*/}; done; '
    "/usr/sbin/qemu-ga -m virtio-serial -p $ga -d -F/etc/qemu/fsfreeze-hook; /bin/busybox echo READY; "
    "i=0; while true; do i=$((i+1)); /bin/busybox echo tick $i >> /data; /bin/busybox echo tick $i; "
    "/bin/busybox sleep 0.3; done"
)


def add_qga(root: Path) -> None:
    """Copy the host's qemu-ga and every library it links into a guest root folder."""
    qga = need("qemu-ga")  # Debian's qemu-guest-agent
    for d in ("usr/sbin", "run", "var/run", "tmp", "etc/qemu"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(qga, root / "usr/sbin/qemu-ga")
    for line in subprocess.run(["ldd", qga], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if lib.startswith("/"):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.realpath(lib), dest)
    hook = root / "etc/qemu/fsfreeze-hook"
    hook.write_text(HOOK)
    hook.chmod(0o755)


def build_image(folder: Path) -> Path:
    """The guest's disk: an ext4 filesystem in a dynamic VHD (qemu-img made, as users' are)."""
    sys.path.insert(0, str(ROOT))
    from fixtures.guest import make_root

    root = folder / "root"
    make_root(root, INIT)
    add_qga(root)
    raw, vhd = folder / "g.raw", folder / "g.vhd"
    subprocess.run(["truncate", "-s", "128M", raw], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", root, raw], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", raw, vhd],
        check=True,
    )
    raw.unlink()
    return vhd


@dataclass
class RunningGuest:
    name: str
    disk: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    def ticks(self) -> int:
        return self.log.read_text(errors="replace").count("tick ")

    def wait_ticks(self, more_than: int, seconds: float = 120.0) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.proc.poll() is None:
            if self.ticks() > more_than:
                return True
            time.sleep(0.3)
        return self.ticks() > more_than


def kill_snapshot_mid_freeze(args: list[str], env: dict[str, str]) -> set[Path]:
    """Start `vhdtool snapshot create ARGS --quiesce required`, wait until it has written its
    group's record (just before the watchdog arms and the freeze begins), and kill -9 it inside
    the 5 s freeze hook, which the caller armed with /slow. Returns the records there were before."""
    records = Path(env["VHDTOOL_SNAPSHOT_DIR"])
    records.mkdir(exist_ok=True)
    earlier = set(records.glob("*.json"))
    proc = subprocess.Popen(
        [*VHDTOOL, "snapshot", "create", *args, "--quiesce", "required"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        end = time.monotonic() + 60
        while set(records.glob("*.json")) == earlier and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(1.5)  # well inside the hook's 5 s
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return earlier


@contextmanager
def booted_guest(folder: str | Path, env: dict[str, str], name: str = "g1") -> Iterator[RunningGuest]:
    """Boot the test guest with `vhdtool run --agent` and yield once it ticks; stop it after."""
    sys.path.insert(0, str(ROOT))
    from fixtures.guest import ensure_guest

    folder = Path(folder)
    guest = ensure_guest()
    disk = build_image(folder)
    env = {**env, "VHDTOOL_STATE_DIR": str(folder / "state")}
    log = folder / "console.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*VHDTOOL, "run", disk, "--name", name, "--agent", "--kernel", guest.kernel, "--initrd", guest.initrd,
             "--append", guest.append],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    running = RunningGuest(name, disk, log, env, proc)
    try:
        if not running.wait_ticks(3):
            raise RuntimeError(f"guest did not start ticking: {log.read_text(errors='replace')[-500:]}")
        yield running
    finally:
        stop_process(proc)
