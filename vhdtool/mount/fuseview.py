"""The FUSE adapter of the raw view: a protocol adapter only, over ``RawTree``'s BlockDevices.

Each callback is a few lines; domain errors become errno values. Requests are large (libfuse3,
1 MiB max_read/max_write). Two caching modes, chosen by who reads the view:

- ``direct`` (the --raw view users see, and the view under a kernel loop device): every file is
  ``direct_io``, so reads and writes reach the image at the size the caller asked for, with no
  second copy in the page cache; large sequential reads and writes are faster this way than
  through the page cache (bench/bench_mount.py).
- cached, with the kernel's writeback cache (the view under fuse2fs, fusefat, ntfs-3g): those
  programs do tiny I/O (fusefat reads and writes FAT entries 4 bytes at a time); the page cache
  turns those tens of thousands of tiny round trips per megabyte into a few large ones.

The files behave like block devices: their size is fixed, O_TRUNC is ignored, truncate() to
another size fails with EINVAL. Callbacks run on several threads; the images are safe for
concurrent pread and serialise pwrite themselves.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from vhdtool.errors import ReadOnlyError, VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.mount import fusebind, fusebufs, hostmap
from vhdtool.mount.rawtree import RawTree

fuse = fusebind.load()
FuseOSError = fuse.FuseOSError

REQUEST = 1 << 20
"""Largest read/write request (libfuse3's ceiling)."""
FUSE_CAP_ATOMIC_O_TRUNC = 1 << 3
"""O_TRUNC arrives as an open flag (ignored here) instead of a truncate call."""
FUSE_CAP_SPLICE_WRITE = 1 << 7
"""Replies made of file buffers are spliced from the image's page cache (see ``fusebufs``)."""
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
ATTR_TIMEOUT = 1.0
"""Seconds the kernel may trust a file's attributes. Not 0: with the writeback cache every read
and write would ask for them again (60,000 getattr calls for one 3 MB fusefat write)."""

log = logging.getLogger("vhdtool.mount")


class RawView(fuse.Operations):  # type: ignore[misc]
    """``/disk`` and ``/p1``..``/pN`` as regular files of fixed size."""

    use_ns = True

    def __init__(
        self,
        tree: RawTree,
        read_only: bool,
        direct: bool,
        like: os.stat_result,
        on_init: Callable[[], None],
        on_write_error: Callable[[str], None] | None = None,
    ) -> None:
        self.tree = tree
        # a write the kernel was told failed may leave its filesystem torn: the owner counts them
        self._on_write_error = on_write_error or (lambda message: None)
        self.read_only = read_only
        self.direct = direct
        self._on_init = on_init
        # the files look like the image file: same owner, same permissions (minus write when read-only)
        self._mode = stat.S_IMODE(like.st_mode) & (0o444 if read_only else 0o666)
        self._owner = {"st_uid": like.st_uid, "st_gid": like.st_gid}
        self._time = time.time_ns()
        self._handles: dict[int, BlockDevice] = {}
        self._next = itertools.count(1)
        self.max_read = fusebufs.read_request(REQUEST)

    def init_with_config(self, conn: Any, config: Any) -> None:
        conn.max_write = conn.max_readahead = REQUEST
        conn.max_read = self.max_read
        for cap in (FUSE_CAP_ATOMIC_O_TRUNC, FUSE_CAP_SPLICE_WRITE, 0 if self.direct else FUSE_CAP_WRITEBACK_CACHE):
            if conn.capable & cap:
                conn.want |= cap
        if config is not None:
            config.direct_io = int(self.direct)
            config.entry_timeout = config.attr_timeout = ATTR_TIMEOUT
            config.negative_timeout = 0.0  # p-files appear as soon as the disk is partitioned
        self._on_init()

    def _device(self, path: str) -> BlockDevice:
        dev = self.tree.get(path.lstrip("/"))
        if dev is None:
            raise FuseOSError(errno.ENOENT)
        return dev

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        times = {"st_atime": self._time, "st_mtime": self._time, "st_ctime": self._time}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        dev = self._handles.get(fh) if fh else None
        size = (dev or self._device(path)).size
        return {
            "st_mode": stat.S_IFREG | self._mode,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": -(-size // 512),
            "st_blksize": REQUEST,
            **self._owner,
            **times,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise FuseOSError(errno.ENOTDIR)
        return [".", "..", *self.tree.names()]

    def open(self, path: str, flags: int) -> int:
        dev = self._device(path)
        if flags & os.O_ACCMODE != os.O_RDONLY and (self.read_only or not dev.writable):
            raise FuseOSError(errno.EROFS)
        fh = next(self._next)
        self._handles[fh] = dev
        return fh

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
        """Answer with buffers libfuse fills, sends and frees: the image files' own byte ranges
        (``hostmap``), else what the BlockDevice reads."""
        fusebind.keep_thread_state()
        dev = self._handles[fh]
        length = max(0, min(size, dev.size - offset))
        pieces = hostmap.locate(dev, offset, length)
        if pieces:
            vec = fusebufs.from_pieces(pieces)
        else:
            try:
                data = dev.pread(offset, length) if length else b""  # at or past the end: nothing
            except VhdError as e:
                log.error("read of %s at %d: %s", path, offset, e)
                raise FuseOSError(errno.EIO) from None
            vec = fusebufs.from_bytes(data)
        fusebufs.hand_over(bufpp, vec)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        fusebind.keep_thread_state()
        dev = self._handles[fh]
        length = min(len(data), dev.size - offset)
        if length <= 0:
            raise FuseOSError(errno.ENOSPC)  # past the end of a fixed-size disk
        try:
            dev.pwrite(offset, memoryview(data)[:length])
        except ReadOnlyError:
            raise FuseOSError(errno.EROFS) from None
        except VhdError as e:
            log.error("write of %s at %d: %s", path, offset, e)
            self._on_write_error(str(e))
            raise FuseOSError(errno.EIO) from None
        if dev is self.tree.dev:
            self.tree.disk_written(offset, length)
        return length

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        dev = self._handles.get(fh) if fh else None
        if (dev or self._device(path)).size != length:
            raise FuseOSError(errno.EINVAL)  # as on a block device: the size is the disk's
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """Accepted and ignored: the files' times are the mount's. With the writeback cache the
        kernel sends file times along with every fsync, which fails if this is missing."""
        self._device(path)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        try:
            self._handles[fh].flush()
        except (VhdError, OSError) as e:
            log.error("fsync of %s: %s", path, e)
            self._on_write_error(str(e))
            raise FuseOSError(errno.EIO) from None
        return 0

    def release(self, path: str, fh: int) -> int:
        self._handles.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        block = 4096
        return {
            "f_bsize": block,
            "f_frsize": block,
            "f_blocks": -(-self.tree.dev.size // block),
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": len(self.tree.names()),
            "f_ffree": 0,
            "f_namemax": 255,
        }


def serve(view: RawView, mountpoint: str) -> None:
    """Mount ``view`` at ``mountpoint`` and serve it until it is unmounted (blocks).

    Run it on a thread other than the main one: libfuse then installs no signal handlers of
    its own (it only takes over signals left at their default, and the server handles them).
    """
    # Two workers a core: the copies (splice) run outside the GIL, one per core at a time; more
    # only switch. Fewer than two a core, one slow fsync leaves a single worker for everything.
    workers = min(16, 2 * len(os.sched_getaffinity(0)))
    options: dict[str, Any] = {
        "foreground": True,
        "default_permissions": True,
        "fsname": "vhdtool",
        "subtype": "vhdtool",
        "max_read": view.max_read,
        "max_threads": workers,
        "max_idle_threads": workers,  # libfuse 3.14 complains about its own default (UINT_MAX) otherwise
    }
    if os.geteuid() == 0:
        options["allow_other"] = True  # as a kernel mount would be: the file modes decide
    if view.read_only:
        options["ro"] = True
    fuse.FUSE(view, mountpoint, **options)
