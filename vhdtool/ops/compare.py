"""`vhdtool compare`: are two disks (VHD chains or raw files) identical, like `qemu-img compare`.

Only where at least one side holds data is anything read; runs that are zeros on both sides are
equal without a read, and so are the holes of the files that hold the data. Disks of different
sizes compare equal when the larger one reads as zeros past the end of the smaller (qemu-img's
default); ``strict`` makes a size difference a mismatch. The first differing offset is reported
sector aligned, as qemu-img does.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.structs import SECTOR
from vhdtool.ops.datapath import CHUNK, Meter, ProgressCallback, held_runs, is_zero, pieces, union_runs
from vhdtool.ops.devices import close_device, open_device


class Comparison(NamedTuple):
    a: str
    b: str
    identical: bool
    offset: int | None
    """First differing offset (sector aligned), None when identical or only the sizes differ."""
    a_size: int
    b_size: int

    @property
    def size_mismatch(self) -> bool:
        return self.a_size != self.b_size

    def as_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "offset": self.offset,
            "size-mismatch": self.size_mismatch,
            "a": {"filename": self.a, "virtual-size": self.a_size},
            "b": {"filename": self.b, "virtual-size": self.b_size},
        }


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    strict: bool = False,
    progress: ProgressCallback | None = None,
) -> Comparison:
    """Compare what two disks read. Formats 'vhd'/'raw' or None to probe."""
    dev_a = open_device(a, a_format)
    try:
        dev_b = open_device(b, b_format)
        try:
            return compare_devices(dev_a, dev_b, strict=strict, progress=progress)
        finally:
            close_device(dev_b)
    finally:
        close_device(dev_a)


def compare_devices(
    a: BlockDevice, b: BlockDevice, *, strict: bool = False, progress: ProgressCallback | None = None
) -> Comparison:
    common = min(a.size, b.size)
    both = union_runs(held_runs(a, 0, common), held_runs(b, 0, common))
    larger = a if a.size > b.size else b
    tail = held_runs(larger, common, larger.size - common) if a.size != b.size else []
    meter = Meter(progress, sum(r.length for r in both) + sum(r.length for r in tail))

    def result(offset: int | None) -> Comparison:
        identical = offset is None and not (strict and a.size != b.size)
        return Comparison(a.path, b.path, identical, offset, a.size, b.size)

    for offset, length in pieces(both, CHUNK):
        x, y = a.pread(offset, length), b.pread(offset, length)
        if x != y:
            return result(offset + _first_difference(x, y) // SECTOR * SECTOR)
        meter.add(length)
    for offset, length in pieces(tail, CHUNK):
        data = larger.pread(offset, length)
        if not is_zero(data):
            return result(offset + _first_difference(data, bytes(length)) // SECTOR * SECTOR)
        meter.add(length)
    return result(None)


def _first_difference(x: bytes, y: bytes) -> int:
    """Index of the first differing byte of two unequal buffers (bisection: memcmp, no byte loop)."""
    lo, hi = 0, len(x)
    while hi - lo > SECTOR:
        mid = (lo + hi) // 2
        if x[lo:mid] == y[lo:mid]:
            lo = mid
        else:
            hi = mid
    for i in range(lo, hi):
        if x[i] != y[i]:
            return i
    return lo
