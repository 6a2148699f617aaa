"""What devices say they can do (nbdkit's can_* callbacks) and where they place their bytes.

The answers are checked against what the device then does: a placement is read back from the
file it names with os.pread and must equal what the device reads; trim and zero are called
where a device says it can.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vhdtool
from vhdtool.disk.view import BytesDevice, Composite, PartitionView
from vhdtool.format.blockdev import BlockDevice, NotPlaceable, RawFile
from vhdtool.format.chain import open_image
from vhdtool.format.rules import MiB


def _read_placed(dev: BlockDevice, offset: int, length: int) -> bytes:
    """What the placements of [offset, offset + length) hold, read from their files."""
    out = bytearray()
    for p in dev.place(offset, length):
        out += bytes(p.length) if p.zero else os.pread(p.fd, p.length, p.file_offset)
    return bytes(out)


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    """base (fixed) <- mid <- top, each layer writing a different pattern at a different place."""
    paths = [tmp_path / "base.vhd", tmp_path / "mid.vhd", tmp_path / "top.vhd"]
    for i, path in enumerate(paths):
        if i == 0:
            vhdtool.create(path, size=8 * MiB, type="fixed")
        else:
            vhdtool.create(path, parent=paths[i - 1])
        with open_image(path, writable=True) as image:
            image.pwrite(i * 3 * MiB - (MiB // 2 if i else 0), bytes([0x41 + i]) * (MiB + 1000))
    return paths


def test_a_chain_names_its_layers_and_places_every_byte(chain: list[Path]) -> None:
    with open_image(chain[2]) as top:
        assert [layer.path for layer in top.layers()] == [str(p) for p in reversed(chain)]
        assert top.can_place
        assert _read_placed(top, 0, top.size) == top.pread(0, top.size)
        depths = {p.depth for p in top.place() if not p.zero}
        assert depths == {0, 1, 2}


def test_a_view_places_its_bytes_as_its_disk_does_shifted(chain: list[Path]) -> None:
    with open_image(chain[2]) as top:
        view = PartitionView(top, MiB + 512, 5 * MiB)
        assert view.can_place
        assert view.layers() == top.layers()
        assert _read_placed(view, 0, view.size) == view.pread(0, view.size)
        assert _read_placed(view, 4096, 70000) == view.pread(4096, 70000)


def test_trim_and_zero_are_offered_only_where_they_work(chain: list[Path], tmp_path: Path) -> None:
    with open_image(chain[2]) as ro:
        assert not ro.can_trim and not ro.can_zero
        assert not PartitionView(ro, 0, MiB).can_trim
    with open_image(chain[2], writable=True) as rw:
        assert rw.can_trim and rw.can_zero
        view = PartitionView(rw, 2 * MiB, 4 * MiB)
        assert view.can_trim and view.can_zero
        view.zero(0, 4 * MiB)
        assert rw.pread(2 * MiB, 4 * MiB) == bytes(4 * MiB)
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"r" * MiB)
    with RawFile(raw, writable=True) as dev:
        assert not dev.can_trim and dev.can_zero and dev.can_place
        assert dev.layers() == [dev]
        dev.zero(4096, 8192)
        assert dev.pread(0, 16384) == b"r" * 4096 + bytes(8192) + b"r" * 4096


def test_zeroing_keeps_a_dynamic_image_sparse(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    vhdtool.create(path, size=64 * MiB)
    with open_image(path, writable=True) as image:
        image.pwrite(0, b"d" * 4096)
        image.zero(0, 64 * MiB)
        assert image.allocated_blocks() == 1
        assert image.pread(0, 8192) == bytes(8192)


def test_devices_in_memory_cannot_place_or_trim() -> None:
    head = BytesDevice(b"head")
    disk = Composite(MiB, [(0, head)])
    for dev in (head, disk):
        assert not dev.can_place and not dev.can_trim and not dev.can_zero
        assert dev.layers() == [dev]
        with pytest.raises(NotPlaceable):
            list(dev.place(0, 4))
