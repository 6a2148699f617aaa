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
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from vhdtool.errors import IoError, ReadOnlyError, UsageError, VhdError, io_error

ZERO_CACHE_LIMIT = 4 << 20


class Extent(NamedTuple):
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


class Placement(NamedTuple):
    """``length`` bytes at disk ``offset``: in layer ``depth``'s file at ``file_offset``, or zeros.

    The one answer to "where does this run of the disk live": `vhdtool map` prints it, the NBD
    server splices from it, the mount hands it to libfuse, convert copies from it."""

    offset: int
    length: int
    depth: int
    """The layer holding the run (0 = top); for zero runs, the bottom layer (as qemu-img map)."""
    zero: bool
    file_offset: int = 0
    path: str | None = None
    fd: int = -1
    """The layer's open file descriptor; -1 for zero runs (and for data a copy reads through
    the device because it lies in no file)."""
    parent_missing: bool = False
    """The run is left to a parent that cannot be found: what it reads is unknown."""

    @property
    def end(self) -> int:
        return self.offset + self.length


class NotPlaceable(VhdError):
    """A layer of the device is not a file vhdtool can place bytes in (an overlay, a view)."""


@runtime_checkable
class BlockDevice(Protocol):
    """A virtual disk of ``size`` bytes. Offsets and lengths are bytes, any alignment.

    Beyond reads and writes a device answers, without being tried, what else it can do (as an
    nbdkit plugin's ``can_*`` callbacks): ``can_zero``, ``can_trim``, ``can_place``; and which
    layers it is made of (``layers()``). ``DeviceBase`` gives every answer a default.
    """

    size: int
    path: str
    writable: bool

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; fewer only at the end of the disk (like os.pread)."""
        ...

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]: ...

    @property
    def can_zero(self) -> bool:
        """Whether ``zero`` may be called (a writable device)."""
        ...

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset + length) read as zeros, keeping the device sparse where it can."""
        ...

    @property
    def can_trim(self) -> bool:
        """Whether ``trim`` may be called: the device can give back the space of a range."""
        ...

    def trim(self, offset: int, length: int) -> None:
        """Discard a range (NBD TRIM, FUSE punch-hole): afterwards it may read as zeros."""
        ...

    def layers(self) -> list[BlockDevice]:
        """The layers whose files hold the data, top first (a chain's images; a file alone)."""
        ...

    @property
    def can_place(self) -> bool:
        """Whether ``place`` answers: every byte the device holds sits in a file of its layers."""
        ...

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        """Where each run of [offset, offset + length) lives, in which file of ``layers()``."""
        ...

    def place_own(self, offset: int, length: int, depth: int) -> Iterator[Placement]:
        """Where this layer's own copy of a run it holds lies in its file (``depth``: its place
        in the chain that asks)."""
        ...

    def close(self) -> None:
        """Release everything the device owns: its files, locks, and the layers it opened."""
        ...

    def close_chain(self) -> None:
        """Close this device and every layer below it, also those its caller opened."""
        ...


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


Run = TypeVar("Run", Extent, Placement)


def join_runs(runs: Iterable[Run], joined: Callable[[Run, Run], Run | None]) -> Iterator[Run]:
    """Runs with each one that ``joined(pending, next)`` can extend joined into it (it returns
    the joined run, or None where the two stay apart); empty runs are left out."""
    pending: Run | None = None
    for run in runs:
        if run.length == 0:
            continue
        if pending is not None:
            grown = joined(pending, run)
            if grown is not None:
                pending = grown
                continue
            yield pending
        pending = run
    if pending is not None:
        yield pending


def _joined_extent(a: Extent, b: Extent) -> Extent | None:
    if a.end != b.offset or a.zero != b.zero or not (b.zero or (a.depth == b.depth and a.source == b.source)):
        return None
    return Extent(a.offset, a.length + b.length, b.zero, b.depth, b.source)


def merge_extents(runs: Iterable[Extent]) -> Iterator[Extent]:
    """Join adjacent runs of the same kind (and same source), as qemu-img map does."""
    return join_runs(runs, _joined_extent)


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


class DeviceBase:
    """What a device that leaves a capability out answers for it: it cannot trim or place bytes,
    it zeroes by writing zeros where data is (when writable), it is its own only layer, and it
    owns nothing to close. Devices derive from it and override what they do better."""

    size: int
    path: str
    writable: bool

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:  # pragma: no cover
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def can_zero(self) -> bool:
        return self.writable

    def zero(self, offset: int, length: int) -> None:
        """Zeros written only where some layer holds data: runs that already read as zeros are
        left alone, so zeroing keeps an image sparse (what `qemu-img convert` to an NBD target
        relies on)."""
        check_range(self, offset, length)
        zeros_chunk = zeros(ZERO_CACHE_LIMIT)
        for run in merge_extents(self.extents(offset, length)):
            if run.zero:
                continue
            pos, stop = max(run.offset, offset), min(run.end, offset + length)
            while pos < stop:
                n = min(stop - pos, ZERO_CACHE_LIMIT)
                self.pwrite(pos, memoryview(zeros_chunk)[:n])
                pos += n

    @property
    def can_trim(self) -> bool:
        return False

    def trim(self, offset: int, length: int) -> None:
        raise UsageError(f"{self.path}: cannot discard")

    def layers(self) -> list[BlockDevice]:
        return [self]  # type: ignore[list-item]

    @property
    def can_place(self) -> bool:
        return False

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        raise NotPlaceable(f"{self.path}: not a file-backed disk")

    def place_own(self, offset: int, length: int, depth: int) -> Iterator[Placement]:
        raise NotPlaceable(f"layer {depth} ({self.path}) is not a file vhdtool can place bytes in")

    def close(self) -> None:
        """Nothing owned: devices that hold files or layers override this."""

    def close_chain(self) -> None:
        for layer in self.layers():
            layer.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def place_layers(dev: BlockDevice, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
    """``dev.place`` for a stack of file layers: each data run of ``extents()`` placed by the
    layer that holds it, zero runs given the depth of the bottom layer."""
    layers = dev.layers()
    bottom = len(layers) - 1
    for extent in dev.extents(offset, length):
        if extent.zero:
            yield Placement(extent.offset, extent.length, bottom, True)
        elif extent.depth < len(layers):
            yield from layers[extent.depth].place_own(extent.offset, extent.length, extent.depth)
        else:
            raise NotPlaceable(f"layer {extent.depth} of {dev.path} is not a file vhdtool can place bytes in")


class WholeFile(DeviceBase):
    """A device whose disk offset X is file offset X of one open file (a raw file, a fixed VHD):
    holes of a sparse file are its zero runs, and every byte it holds is placed in that file."""

    _fd: int

    def fileno(self) -> int:
        return self._fd

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self.size if length is None else offset + length
        return file_extents(self._fd, offset, end, self.path)

    @property
    def can_place(self) -> bool:
        return True

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        return place_layers(self, offset, length)

    def place_own(self, offset: int, length: int, depth: int) -> Iterator[Placement]:
        yield Placement(offset, length, depth, False, offset, self.path, self._fd)

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RawFile(WholeFile):
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

    def close(self) -> None:
        self._close_file()
