"""A FUSE file system of one folder whose files fail with EIO on command, for fault injection.

    python -m tests.campaigns.faultyfs BACKING MOUNTPOINT

Every file of BACKING appears in MOUNTPOINT. Writing ``read``, ``write`` or ``all`` to
``BACKING/.fail`` (outside the mount, so the switch never fails itself) makes reads, writes or
both of every file return EIO until the switch is emptied; ``read-range START END`` fails only
the reads that touch bytes [START, END) of a file (a bad sector in the middle of a disk).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import mfusepy as fuse


class FaultyPassthrough(fuse.Operations):  # type: ignore[misc]
    def __init__(self, backing: str) -> None:
        self.backing = backing

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _failing(self, what: str, start: int = 0, end: int = 0) -> bool:
        try:
            with open(os.path.join(self.backing, ".fail")) as f:
                mode = f.read().strip()
        except OSError:
            return False
        if what == "read" and mode.startswith("read-range "):
            bad_start, bad_end = map(int, mode.split()[1:])
            return start < bad_end and end > bad_start
        return mode in (what, "all")

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._real(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno) from None
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *(n for n in os.listdir(self._real(path)) if n != ".fail")]

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if self._failing("read", offset, offset + size):
            raise fuse.FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if self._failing("write"):
            raise fuse.FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(self._real(path), length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        if self._failing("write"):
            raise fuse.FuseOSError(errno.EIO)
        os.fsync(fh)

    def flush(self, path: str, fh: int) -> None:
        return None

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._real(old), self._real(new))


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    # direct_io: every read and write reaches us, so a switched-on fault shows at once
    fuse.FUSE(FaultyPassthrough(backing), mountpoint, foreground=True, direct_io=True)


if __name__ == "__main__":
    main()
