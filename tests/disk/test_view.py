"""PartitionView and Composite: windows and assemblies of BlockDevices."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhdtool.disk.view import BytesDevice, Composite, PartitionView
from vhdtool.errors import ReadOnlyError, UsageError, VhdError
from vhdtool.format.blockdev import Extent, RawFile

MiB = 1 << 20


def test_partition_view_shifts_and_clips(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"A" * 4096)
    with RawFile(path, writable=True) as dev:
        view = PartitionView(dev, 2 * MiB, 4 * MiB)
        assert view.size == 4 * MiB
        assert view.pread(MiB, 4) == b"AAAA"
        view.pwrite(0, b"part")
        assert dev.pread(2 * MiB, 4) == b"part"
        data = [e for e in view.extents() if not e.zero]
        assert [(e.offset, e.length) for e in data] == [(0, 4096), (MiB, 4096)]
        with pytest.raises(VhdError, match="outside the disk"):
            view.pread(4 * MiB - 2, 4)
        with pytest.raises(UsageError, match="outside the disk"):
            PartitionView(dev, 6 * MiB, 4 * MiB)
    with RawFile(path) as dev, pytest.raises(ReadOnlyError):
        PartitionView(dev, 0, MiB).pwrite(0, b"x")


def test_composite_reads_pieces_and_gaps(tmp_path: Path) -> None:
    part = tmp_path / "part.img"
    with open(part, "wb") as f:
        f.truncate(2 * MiB)
        f.seek(MiB)
        f.write(b"B" * 512)
    with RawFile(part) as p:
        disk = Composite(8 * MiB, [(4 * MiB, p), (0, BytesDevice(b"head"))])
        assert disk.pread(0, 6) == b"head\0\0"
        assert disk.pread(5 * MiB - 2, 4) == b"\0\0BB"
        assert disk.pread(7 * MiB, 16) == bytes(16)
        assert list(disk.extents()) == [
            Extent(0, 4, False, 0, "<bytes>"),
            Extent(4, 5 * MiB - 4, True),
            Extent(5 * MiB, 4096, False, 0, str(part)),  # the host fs allocates 4 KiB
            Extent(5 * MiB + 4096, 3 * MiB - 4096, True),
        ]
        with pytest.raises(UsageError, match="overlaps"):
            Composite(8 * MiB, [(0, p), (MiB, p)])
