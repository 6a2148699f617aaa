"""What one NBD request does to a BlockDevice: plain blocking functions (worker threads, or the
event loop for reads from the page cache).

They know nothing of sockets or of the wire format; ``transmission`` turns their results into
replies (zeroing and trimming are the device's own ``zero`` and ``trim``). Holes and allocation
come from the device's ``extents()``, so a sparse VHD chain stays
sparse for clients that read with structured replies or ask for block status.
"""

from __future__ import annotations

from vhdtool.format.blockdev import BlockDevice, merge_extents
from vhdtool.nbd import filemap
from vhdtool.nbd.protocol import STATE_HOLE, STATE_ZERO
from vhdtool.nbd.splice import SEGMENT, FileRange

MIN_HOLE = 4096
"""Zero runs shorter than this are sent as data: a hole chunk costs more than it saves."""

_ZEROS = memoryview(bytes(1 << 20))

SPLICE_MIN = 64 << 10
"""Reads shorter than this are copied: a pipe and two splices cost more than a small copy."""

Source = bytes | memoryview | FileRange
ReadPiece = tuple[int, int | list[Source]]
"""(offset, what a data chunk carries) or (offset, length) for a hole."""


def read_pieces(dev: BlockDevice, offset: int, length: int, holes: bool, files: bool = False) -> list[ReadPiece]:
    """[offset, offset + length) as data pieces and, when ``holes``, hole pieces.

    With ``files``, data that lies in the files the device is made of is described as file
    ranges, left to be spliced (see ``splice.pack``) under the same gate; otherwise, or when the
    device is of another kind, data between holes is read with one pread each.
    """
    if files and length >= SPLICE_MIN:
        pieces = _file_pieces(dev, offset, length, holes)
        if pieces is not None:
            return pieces
    if not holes:
        return [(offset, [dev.pread(offset, length)])]
    end = offset + length
    pieces: list[ReadPiece] = []
    data_from = offset
    for run in merge_extents(dev.extents(offset, length)):
        if not run.zero:
            continue
        start, stop = max(run.offset, data_from), min(run.end, end)
        if stop - start < MIN_HOLE:
            continue
        if start > data_from:
            pieces.append((data_from, [dev.pread(data_from, start - data_from)]))
        pieces.append((start, stop - start))
        data_from = stop
        if data_from >= end:
            break
    if data_from < end:
        pieces.append((data_from, [dev.pread(data_from, end - data_from)]))
    return pieces


def _file_pieces(dev: BlockDevice, offset: int, length: int, holes: bool) -> list[ReadPiece] | None:
    runs = filemap.locate(dev, offset, length)
    if runs is None:
        return None
    pieces: list[ReadPiece] = []
    data: list[Source] = []
    data_at = offset
    for run in runs:
        if run.zero and holes and run.length >= MIN_HOLE:
            if data:
                pieces.append((data_at, data))
                data = []
            pieces.append((run.offset, run.length))
            data_at = run.end
        elif run.zero:
            data += [_ZEROS[: min(n, len(_ZEROS))] for n in range(run.length, 0, -len(_ZEROS))]
        else:
            fd, at = run.fd, run.file_offset
            data += [FileRange(fd, at + n, min(SEGMENT, run.length - n)) for n in range(0, run.length, SEGMENT)]
    if data:
        pieces.append((data_at, data))
    return pieces


def allocation(dev: BlockDevice, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
    """base:allocation descriptors (length, flags) from ``offset``, at most ``limit`` of them.

    They cover at most the request; a client asks again from where they stop.
    """
    end = offset + length
    runs: list[tuple[int, int]] = []
    pos = offset
    for run in merge_extents(dev.extents(offset, length)):
        start, stop = max(run.offset, pos), min(run.end, end)
        if stop <= start:
            continue
        if start > pos:  # a gap in what the device reported: call it data, the safe answer
            runs.append((start - pos, 0))
        flags = STATE_HOLE | STATE_ZERO if run.zero else 0
        if runs and runs[-1][1] == flags:
            runs[-1] = (runs[-1][0] + stop - start, flags)
        else:
            if len(runs) == limit:
                break
            runs.append((stop - start, flags))
        pos = stop
        if pos >= end:
            break
    if not runs:
        runs.append((length, 0))
    return runs[:limit]
