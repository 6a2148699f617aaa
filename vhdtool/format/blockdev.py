"""The BlockDevice protocol: what every consumer (ops, FUSE, NBD, the runner) sees of a disk.

Like an nbdkit plugin, a disk is a small table of operations on (offset, length). Images, raw
files and overlay layers all implement it; consumers never parse on-disk bytes.

``extents()`` describes the virtual disk as runs: ``data`` runs are held by some file of the
chain (``source`` names it, ``depth`` counts layers from the top, 0 = the top image), ``zero``
runs read as zeros and hold no data anywhere in the chain.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

from vhdtool.errors import IoError, ReadOnlyError, UsageError, VhdError, io_error

ZERO_CACHE_LIMIT = 4 << 20


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of the virtual disk: [offset, offset + length)."""

    offset: int
    length: int
    zero: bool
    """True when the run reads as zeros and no layer holds data for it."""
    depth: int = 0
    """Which layer holds the data: 0 = top image, 1 = its parent, ... (meaningless when zero)."""
    source: str | None = None
    """Path of the file holding the data (None for zero runs)."""

    @property
    def end(self) -> int:
        return self.offset + self.length


@runtime_checkable
class BlockDevice(Protocol):
    """A virtual disk of ``size`` bytes. Offsets and lengths are bytes, any alignment."""

    size: int
    path: str
    writable: bool

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; fewer only at the end of the disk (like os.pread)."""
        ...

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]: ...

    def close(self) -> None: ...


@lru_cache(maxsize=8)
def _shared_zeros(length: int) -> bytes:
    return bytes(length)


def zeros(length: int) -> bytes:
    """``length`` zero bytes. bytes are immutable, so reads of unallocated space share one object
    per common length instead of allocating and clearing a new buffer each time."""
    return _shared_zeros(length) if length <= ZERO_CACHE_LIMIT else bytes(length)


def clip_read(dev: BlockDevice, offset: int, length: int) -> int:
    """The length a read at ``offset`` returns: like os.pread, short at the end of the disk and
    empty past it. Negative offsets or lengths are refused."""
    if offset < 0 or length < 0:
        raise VhdError(f"{dev.path}: read of {length} bytes at offset {offset} is not valid")
    return max(0, min(length, dev.size - offset))


def check_range(dev: BlockDevice, offset: int, length: int) -> None:
    """Refuse requests outside the virtual disk, naming the device and the request."""
    if offset < 0 or length < 0 or offset + length > dev.size:
        raise VhdError(f"{dev.path}: request [{offset}, {offset + length}) lies outside the disk of {dev.size} bytes")


def merge_extents(runs: Iterator[Extent]) -> Iterator[Extent]:
    """Join adjacent runs of the same kind (and same source), as qemu-img map does."""
    pending: Extent | None = None
    for run in runs:
        if run.length == 0:
            continue
        if (
            pending is not None
            and pending.end == run.offset
            and pending.zero == run.zero
            and (run.zero or (pending.depth == run.depth and pending.source == run.source))
        ):
            pending = Extent(pending.offset, pending.length + run.length, run.zero, run.depth, run.source)
            continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


def pwrite_all(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    """os.pwrite until every byte is written (a pwrite may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def file_extents(fd: int, offset: int, end: int, path: str) -> Iterator[Extent]:
    """Data and hole runs of a sparse file between offset and end (SEEK_DATA / SEEK_HOLE)."""
    pos = offset
    while pos < end:
        try:
            data_start = min(os.lseek(fd, pos, os.SEEK_DATA), end)
        except OSError:  # ENXIO: only a hole remains
            data_start = end
        if data_start > pos:
            yield Extent(pos, data_start - pos, True)
            pos = data_start
            if pos >= end:
                break
        try:
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        yield Extent(pos, hole - pos, False, 0, path)
        pos = hole


class RawFile:
    """A raw disk image file (or block device) as a BlockDevice.

    extents() reports holes of a sparse file as zero runs via SEEK_DATA/SEEK_HOLE.
    """

    def __init__(self, path: str | os.PathLike[str], writable: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        try:
            self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise VhdError(f"{self.path}: cannot open: {e.strerror}") from None
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise UsageError(f"{self.path}: is a directory")
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def fileno(self) -> int:
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        length = clip_read(self, offset, length)
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:
            raise io_error(self.path, "read", e) from None
        if len(data) < length:
            # another process shrank the file: zeros here would be data the disk never held
            raise IoError(
                f"{self.path}: the file shrank to {offset + len(data)} bytes while open "
                f"(it was {self.size} bytes); its data past that is gone"
            )
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only")
        check_range(self, offset, len(data))
        try:
            pwrite_all(self._fd, offset, data)
        except OSError as e:
            raise io_error(self.path, "write", e) from None

    def flush(self) -> None:
        if self.writable:
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise io_error(self.path, "flush", e) from None

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self.size if length is None else offset + length
        return file_extents(self._fd, offset, end, self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
