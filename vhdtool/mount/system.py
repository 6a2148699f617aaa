"""The host's mount table and unmounting: /proc/self/mountinfo, umount2(2), fusermount.

Unmounting as root goes straight to umount2(2), which gives an exact errno (EBUSY for a busy
mount); as a user only FUSE mounts can be undone, through fusermount3/fusermount.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vhdtool.errors import VhdError

MNT_DETACH = 2
MOUNTINFO = "/proc/self/mountinfo"


class BusyError(VhdError):
    """A mount cannot go away because something still uses it."""


@dataclass(frozen=True, slots=True)
class Mounted:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    device: str
    """major:minor of the mounted filesystem (a FUSE mount's minor names its connection)."""
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", errors="surrogateescape")


def mount_table() -> list[Mounted]:
    out = []
    with open(MOUNTINFO) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            a, b = left.split(), right.split()
            out.append(Mounted(int(a[0]), a[2], _unescape(a[4]), b[0], _unescape(b[1])))
    return out


def mounted_at(path: str) -> Mounted | None:
    """The mount on top at ``path`` (the last one listed there), or None."""
    real = os.path.realpath(path)
    found = None
    for m in mount_table():
        if m.mountpoint == real:
            found = m
    return found


def is_fuse(m: Mounted) -> bool:
    return m.fstype == "fuse" or m.fstype.startswith(("fuse.", "fuseblk"))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount ``path``; BusyError when in use (unless ``lazy``: then it detaches at once and
    goes away when its last user leaves)."""
    if os.geteuid() == 0:
        if _libc().umount2(os.fsencode(path), MNT_DETACH if lazy else 0) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EBUSY:
            raise BusyError(f"{path}: busy (a process has a file open or its working folder there)")
        if code == errno.EINVAL and mounted_at(path) is None:
            return  # already gone
        raise VhdError(f"{path}: cannot unmount: {os.strerror(code)}")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise VhdError(f"{path}: cannot unmount: fusermount is not installed")
    done = subprocess.run([tool, "-u", *(["-z"] if lazy else []), path], capture_output=True, text=True)
    if done.returncode:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "busy" in message.lower():
            raise BusyError(f"{path}: busy (a process has a file open or its working folder there)")
        raise VhdError(f"{path}: cannot unmount: {message}")


def abort_fuse(m: Mounted) -> None:
    """Cut a FUSE connection (its server then stops; open files get ENOTCONN)."""
    minor = m.device.split(":")[1]
    abort = Path(f"/sys/fs/fuse/connections/{minor}/abort")
    with contextlib.suppress(OSError):  # fusectl not mounted, or the connection is already gone
        abort.write_text("1")


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
