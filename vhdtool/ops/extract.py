"""A partition of an image as a sparse temporary raw file, and writing back only what changed.

The filesystems' tools need a raw file. ``extract`` copies a partition's allocated, non-zero
pieces into a sparse temporary file (zero runs stay holes) and, when the caller will write,
remembers a digest of every non-zero 64 KiB grain. ``write_back`` then walks the temporary
file's data (SEEK_DATA/SEEK_HOLE) and writes into the image only the grains whose contents
changed, plus zeros where a grain that held data has become a hole. Nothing reaches the image
unless ``write_back`` is called, which callers do only after the tool and a fsck succeeded:
a failed command leaves the image untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field

from vhdtool.format.blockdev import BlockDevice, Extent, RawFile
from vhdtool.leftovers import sweep
from vhdtool.ops.datapath import data_runs, is_zero, pieces

GRAIN = 64 << 10
"""Granularity of change tracking: small enough that a changed inode writes little back."""
CHUNK = 4 << 20
VOLUME_LEFTOVER = r"vhdtool-volume-(?P<pid>\d+)-\w+\.raw"
"""Names of extracts: the owner's pid first, so that a later run removes those of a killed one."""


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(slots=True)
class Extract:
    """A sparse temporary copy of ``source`` (a partition view) at ``path``."""

    source: BlockDevice
    path: str
    size: int
    digests: dict[int, bytes] | None = field(default=None)
    """Grain offset -> digest of its original non-zero contents (None: read-only extract)."""

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def extract(source: BlockDevice, track: bool, directory: str | None = None) -> Extract:
    """Copy ``source`` into a new sparse temporary file; ``track`` records grain digests for write_back."""
    folder = directory or tempfile.gettempdir()
    sweep(folder, VOLUME_LEFTOVER)
    fd, path = tempfile.mkstemp(prefix=f"vhdtool-volume-{os.getpid()}-", suffix=".raw", dir=folder)
    digests: dict[int, bytes] | None = {} if track else None
    try:
        os.ftruncate(fd, source.size)
        for offset, length in pieces(data_runs(source), CHUNK):
            data = source.pread(offset, length)
            if is_zero(data):
                continue
            view = memoryview(data)
            # grain by grain, so that zeros inside allocated blocks stay holes in the extract
            for lo, n in pieces([Extent(offset, length, False)], GRAIN):
                hi = lo + n
                grain = view[lo - offset : hi - offset]
                if is_zero(grain):
                    continue
                _pwrite_all(fd, lo, grain)
                if digests is not None:
                    whole = lo % GRAIN == 0 and hi - lo == GRAIN
                    # a grain cut by a run edge is compared by content on write-back instead
                    digests[lo - lo % GRAIN] = _digest(grain) if whole else b""
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return Extract(source, path, source.size, digests)


def write_back(ex: Extract, into: BlockDevice | None = None) -> int:
    """Write the grains of ``ex.path`` that differ from what was extracted into ``into`` (a device
    reading what ``ex.source`` reads; default ``ex.source`` itself); returns bytes written."""
    assert ex.digests is not None, "write_back needs an extract made with track=True"
    target = ex.source if into is None else into
    written = 0
    seen: set[int] = set()
    with RawFile(ex.path) as tmp:
        for offset, _length in pieces(data_runs(tmp), GRAIN):
            grain = offset - offset % GRAIN
            if grain in seen:  # two runs in one grain: the first visit compared all of it
                continue
            seen.add(grain)
            start, end = grain, min(grain + GRAIN, ex.size)
            new = tmp.pread(start, end - start)
            old = ex.digests.get(grain)
            if old is None and is_zero(new):
                continue
            if old is not None and old and _digest(new) == old:
                continue
            if old == b"" and target.pread(start, end - start) == new:
                continue
            target.pwrite(start, new)
            written += end - start
        for grain in ex.digests.keys() - seen:  # held data before, a hole now: reads zeros
            n = min(GRAIN, ex.size - grain)
            target.pwrite(grain, bytes(n))
            written += n
    target.flush()
    return written


def _pwrite_all(fd: int, offset: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
