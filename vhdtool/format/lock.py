"""Advisory locks on image files: one writer at a time, and no writer under an open child."""

from __future__ import annotations

import fcntl
import os

from vhdtool.errors import LockedError


def lock_image(fd: int, path: str, exclusive: bool) -> None:
    """flock the image: exclusive for a writer, shared for a parent held open under a child.

    A writer and a reader that holds the file as a parent exclude each other; plain read-only
    opens (info, convert) take no lock, so inspecting a running image works.
    """
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        if exclusive:
            raise LockedError(f"{path}: image is in use by another process (locked)") from None
        raise LockedError(f"{path}: image is open for writing by another process (locked)") from None


def held_elsewhere(path: str) -> bool:
    """Whether another process holds an exclusive flock on ``path`` (a live owner of a state
    entry: the kernel drops the lock however its owner ends, ``kill -9`` included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False
