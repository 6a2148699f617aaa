"""Advisory locks on image files: one writer at a time, and no writer under a reader.

Every open of an image takes a lock, as qemu does: a writer the exclusive one, a reader (a
parent under a child, a read-only server or mount, a convert or compare source, info) the shared
one. So a command that moves or rewrites blocks (compact, resize, merge, repair, ...) is refused
while anything reads the image, and a reader is refused while a writer works on it.

flock conflicts between two opens of one file even inside one process; a process that holds an
image for writing and opens it again read-only (to check what it wrote, say) knows its own
writes, so that second open takes no lock of its own.
"""

from __future__ import annotations

import fcntl
import os
import threading

from vhdtool.errors import LockedError

_writing: dict[tuple[int, int], int] = {}
"""(device, inode) -> the fd of this process that holds the file's exclusive lock."""
_guard = threading.Lock()


def lock_image(fd: int, path: str, exclusive: bool) -> None:
    """flock the image: exclusive for a writer, shared for a reader."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if not exclusive and _written_here(key):
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        if exclusive:
            raise LockedError(f"{path}: image is in use by another process (locked)") from None
        raise LockedError(f"{path}: image is open for writing by another process (locked)") from None
    if exclusive:
        with _guard:
            _writing[key] = fd


def _written_here(key: tuple[int, int]) -> bool:
    with _guard:
        fd = _writing.get(key)
        if fd is None:
            return False
        try:
            st = os.fstat(fd)
            writing = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        except OSError:
            st, writing = None, False
        if st is None or (st.st_dev, st.st_ino) != key or not writing:  # closed since (the number maybe reused)
            del _writing[key]
            return False
        return True


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
