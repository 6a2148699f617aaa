"""Advisory locks on image files: one writer at a time, and no writer under an open child."""

from __future__ import annotations

import fcntl

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
