"""BlockDevice windows and compositions: a partition as a disk, and a disk assembled from pieces.

``PartitionView`` is nbdkit's offset filter: a range of a lower device, every request shifted
and clipped, everything else (trim, placement of its bytes in files) passed through; it never
closes the device below. ``Composite`` places devices side by side on a larger empty disk (a
partition table written as bytes, a filesystem built in its own sparse file): ``build``
converts one into a VHD without ever assembling a whole-disk raw file. Its pieces belong to
the caller too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from vhdtool.errors import ReadOnlyError, UsageError
from vhdtool.format.blockdev import BlockDevice, DeviceBase, Extent, Placement, check_range, merge_extents
from vhdtool.format.filter import Filter


class PartitionView(Filter):
    """The bytes [offset, offset + size) of ``dev`` as a BlockDevice of its own."""

    def __init__(self, dev: BlockDevice, offset: int, size: int, name: str | None = None) -> None:
        if offset < 0 or size < 0 or offset + size > dev.size:
            raise UsageError(
                f"{dev.path}: window [{offset}, {offset + size}) lies outside the disk of {dev.size} bytes"
            )
        super().__init__(dev)
        self.offset = offset
        self.size = size
        self.path = name or f"{dev.path}@{offset}"

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        return self.lower.pread(self.offset + offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only")
        check_range(self, offset, len(data))
        self.lower.pwrite(self.offset + offset, data)

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        length = self.size - offset if length is None else length
        check_range(self, offset, length)
        for e in self.lower.extents(self.offset + offset, length):
            start = max(e.offset, self.offset + offset)
            end = min(e.end, self.offset + offset + length)
            if end > start:
                yield Extent(start - self.offset, end - start, e.zero, e.depth, e.source)

    def zero(self, offset: int, length: int) -> None:
        check_range(self, offset, length)
        self.lower.zero(self.offset + offset, length)

    def trim(self, offset: int, length: int) -> None:
        check_range(self, offset, length)
        self.lower.trim(self.offset + offset, length)

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        length = self.size - offset if length is None else length
        check_range(self, offset, length)
        for p in self.lower.place(self.offset + offset, length):
            yield p._replace(offset=p.offset - self.offset)


class ReadOnlyDevice(DeviceBase):
    """A device assembled in memory or from pieces: never written, nothing to flush."""

    writable = False

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise ReadOnlyError(f"{self.path}: read-only")

    def flush(self) -> None:
        pass


class BytesDevice(ReadOnlyDevice):
    """A small read-only device held in memory (a partition table, a boot sector)."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self._data = bytes(data)
        self.size = len(self._data)
        self.path = name

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        return self._data[offset : offset + length]

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        length = self.size - offset if length is None else length
        check_range(self, offset, length)
        if length:
            yield Extent(offset, length, False, 0, self.path)


class Composite(ReadOnlyDevice):
    """A read-only disk of ``size`` bytes made of non-overlapping pieces; gaps read as zeros."""

    def __init__(self, size: int, pieces: Sequence[tuple[int, BlockDevice]], name: str = "<composite>") -> None:
        self.size = size
        self.path = name
        self._pieces = sorted(pieces, key=lambda p: p[0])
        self._starts = [off for off, _ in self._pieces]
        end = 0
        for off, dev in self._pieces:
            if off < end or off + dev.size > size:
                raise UsageError(f"{name}: piece at {off} ({dev.size} bytes) overlaps another or the disk end")
            end = off + dev.size

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, int, BlockDevice | None, int]]:
        """(disk offset, length, piece or None for a gap, offset inside the piece) covering the range."""
        pos, end = offset, offset + length
        i = max(bisect.bisect_right(self._starts, pos) - 1, 0)
        while pos < end:
            if i < len(self._pieces):
                start, dev = self._pieces[i]
                if pos < start:
                    n = min(start, end) - pos
                    yield pos, n, None, 0
                    pos += n
                    continue
                if pos < start + dev.size:
                    n = min(start + dev.size, end) - pos
                    yield pos, n, dev, pos - start
                    pos += n
                    continue
                i += 1
                continue
            yield pos, end - pos, None, 0
            pos = end

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        runs = list(self._runs(offset, length))
        if len(runs) == 1 and runs[0][2] is not None:  # the common case: inside one piece, no copy
            return runs[0][2].pread(runs[0][3], length)
        out = bytearray()
        for _, n, dev, inner in runs:
            out += bytes(n) if dev is None else dev.pread(inner, n)
        return bytes(out)

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        length = self.size - offset if length is None else length
        check_range(self, offset, length)

        def runs() -> Iterator[Extent]:
            for pos, n, dev, inner in self._runs(offset, length):
                if dev is None:
                    yield Extent(pos, n, True)
                    continue
                for e in dev.extents(inner, n):
                    yield Extent(pos + e.offset - inner, e.length, e.zero, e.depth, e.source)

        return merge_extents(runs())
