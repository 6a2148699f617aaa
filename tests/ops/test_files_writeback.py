"""The extract/write-back route: only changed grains reach the image, holes and partial grains included."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import vhdtool
from vhdtool.disk.view import PartitionView
from vhdtool.ops.extract import GRAIN, extract, write_back

MiB = 1 << 20


def test_write_back_writes_exactly_the_changes(tmp_path: Path) -> None:
    img = tmp_path / "disk.vhd"
    vhdtool.create(img, size=16 * MiB)
    with vhdtool.open(img, writable=True) as dev:
        dev.pwrite(1 * MiB, os.urandom(3 * MiB))  # data, partly changed below
        dev.pwrite(6 * MiB + 4096, b"edge" * 1024)  # a run that starts and ends mid-grain
    with vhdtool.open(img, writable=True) as dev:
        view = PartitionView(dev, MiB, 14 * MiB)  # a partition: grains count from its start
        ex = extract(view, track=True)
        try:
            assert os.path.getsize(ex.path) == 14 * MiB
            assert os.stat(ex.path).st_blocks * 512 < 4 * MiB  # sparse: only the data
            with open(ex.path, "r+b") as f:
                f.seek(GRAIN + 10)
                f.write(b"changed")  # one grain changes
                f.seek(8 * MiB)
                f.write(b"new data in a hole")  # one grain appears
                f.seek(5 * MiB + 4096)
                f.write(b"EDGE")  # the partial grain changes
            # a grain that held data becomes a hole: must read back as zeros
            fd = os.open(ex.path, os.O_RDWR)
            try:  # fallocate(2) FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                libc = ctypes.CDLL(None, use_errno=True)
                assert libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(2 * MiB), ctypes.c_long(GRAIN)) == 0
            finally:
                os.close(fd)
            expected = Path(ex.path).read_bytes()
            written = write_back(ex)
            assert view.pread(0, 14 * MiB) == expected
            assert written == 4 * GRAIN  # changed, new, partial edge, punched: nothing else
        finally:
            ex.close()
    assert not os.path.exists(ex.path)
