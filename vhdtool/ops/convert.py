"""`vhdtool convert`: copy any VHD (a chain flattened) or raw image into a raw file or a new VHD.

Only runs some layer holds data for are read (a raw source is walked with SEEK_DATA/SEEK_HOLE,
a VHD by its BATs), in pieces of up to 4 MiB; pieces that are all zeros are not written, so a
raw output is a sparse file and a dynamic VHD gets no block for them. A dynamic VHD is laid out
directly (footer copy, header, BAT, then the blocks in disk order, then the footer) rather than
through block allocation, which would rewrite the footer once per block.

The output is written to a temporary file beside the destination and renamed into place: an
interrupted convert leaves no destination at all.
"""

from __future__ import annotations

import os
import sys
from array import array
from dataclasses import asdict, dataclass
from typing import Any

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.layout import BAT_OFFSET, footer_fields, new_unique_id, sparse_image_bytes, write_new_file
from vhdtool.format.rewrite import pwrite_all, round_up
from vhdtool.format.structs import DISK_TYPE_FIXED, NO_DATA_OFFSET, SECTOR, UNALLOCATED, build_footer
from vhdtool.ops.datapath import (
    Meter,
    ProgressCallback,
    in_order,
    read_grid,
    worker_pool,
)
from vhdtool.ops.devices import close_device, open_device
from vhdtool.ops.sources import Piece, SourceReader

OUTPUT_FORMATS = ("vhd", "raw")
DATA_ALIGNMENT = 4096
VHD_TYPES = ("dynamic", "fixed")


@dataclass(frozen=True, slots=True)
class Converted:
    source: str
    destination: str
    format: str
    """'vhd' or 'raw'."""
    type: str | None
    """'dynamic' or 'fixed' for a VHD, None for raw."""
    size: int
    """Virtual size of the output."""
    data_bytes: int
    """Bytes of data written (zero runs are not)."""
    file_size: int

    def as_json(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def output_format_for(destination: str, output_format: str | None, disk_type: str | None) -> str:
    """-O as given; else 'vhd' for a .vhd destination or when a VHD type was asked for; else 'raw'."""
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {output_format!r} (choose vhd or raw)")
        if output_format == "raw" and disk_type is not None:
            raise UsageError("--type applies to VHD output, not raw")
        return output_format
    if disk_type is not None or destination.lower().endswith(".vhd"):
        return "vhd"
    return "raw"


def convert(
    source: str | os.PathLike[str] | BlockDevice,
    destination: str | os.PathLike[str],
    *,
    output_format: str | None = None,
    disk_type: str | None = None,
    block_size: int | None = None,
    source_format: str | None = None,
    overwrite: bool = False,
    unique_id: bytes | None = None,
    timestamp: int | None = None,
    progress: ProgressCallback | None = None,
) -> Converted:
    """Convert ``source`` (a path, probed as VHD or raw unless ``source_format`` says, or an open
    BlockDevice, which stays open) into ``destination``.

    ``output_format`` 'vhd'/'raw' (default from the destination's extension), ``disk_type``
    'dynamic' (default) or 'fixed', ``block_size`` for dynamic output (default 2 MiB).
    ``progress(done, total)`` is called as data is copied. Refuses an existing destination
    unless ``overwrite``. ``unique_id`` (16 bytes) and ``timestamp`` (Unix time) make a VHD output
    byte-for-byte reproducible.
    """
    destination = os.fspath(destination)
    fmt = output_format_for(destination, output_format, disk_type)
    disk_type = disk_type or "dynamic"
    if disk_type not in VHD_TYPES:
        raise UsageError(f"unknown VHD type {disk_type!r} (choose dynamic or fixed)")
    if block_size is not None:
        if fmt != "vhd" or disk_type != "dynamic":
            raise UsageError("--block-size applies to dynamic VHD output only")
        rules.validate_block_size(block_size)
    if isinstance(source, BlockDevice):
        _refuse_same_file(source.path, destination)
        return _convert(source, destination, fmt, disk_type, block_size, overwrite, unique_id, timestamp, progress)
    source = os.fspath(source)
    _refuse_same_file(source, destination)
    dev = open_device(source, source_format)
    try:
        return _convert(dev, destination, fmt, disk_type, block_size, overwrite, unique_id, timestamp, progress)
    finally:
        close_device(dev)


def _refuse_same_file(source: str, destination: str) -> None:
    if os.path.exists(destination) and os.path.exists(source) and os.path.samefile(source, destination):
        raise UsageError(f"{destination}: is the source itself")


def _convert(
    src: BlockDevice,
    destination: str,
    fmt: str,
    disk_type: str,
    block_size: int | None,
    overwrite: bool,
    unique_id: bytes | None,
    timestamp: int | None,
    progress: ProgressCallback | None,
) -> Converted:
    if os.path.isdir(destination):
        raise UsageError(f"{destination}: is a directory")
    size = src.size
    if fmt == "vhd":
        size = round_up(src.size)  # a VHD holds whole sectors; the tail reads as zeros, as in qemu-img
        rules.validate_virtual_size(size, disk_type)
    grid = read_grid(src)
    if fmt == "vhd" and disk_type == "dynamic":
        block_size = block_size or rules.DEFAULT_BLOCK_SIZE
        grid = min(grid, block_size)
    reader = SourceReader(src, grid)
    return _write(reader, src, destination, fmt, disk_type, size, block_size, overwrite, unique_id, timestamp, progress)


def _write(
    reader: SourceReader,
    src: BlockDevice,
    destination: str,
    fmt: str,
    disk_type: str,
    size: int,
    block_size: int | None,
    overwrite: bool,
    unique_id: bytes | None,
    timestamp: int | None,
    progress: ProgressCallback | None,
) -> Converted:
    meter = Meter(progress, sum(p.length for p in reader.pieces))
    uid = unique_id or new_unique_id()
    stamp = rules.to_vhd_timestamp(timestamp)

    def write(fd: int) -> None:
        if fmt == "raw":
            os.ftruncate(fd, size)
            _copy_pieces(reader, fd, meter)
        elif disk_type == "fixed":
            os.ftruncate(fd, size)
            _copy_pieces(reader, fd, meter)
            pwrite_all(fd, size, build_footer(footer_fields(DISK_TYPE_FIXED, size, NO_DATA_OFFSET, uid, stamp)))
        else:
            assert block_size is not None
            _write_dynamic(reader, fd, destination, size, block_size, uid, stamp, meter)

    write_new_file(destination, write, overwrite)
    return Converted(
        source=src.path,
        destination=destination,
        format=fmt,
        type=disk_type if fmt == "vhd" else None,
        size=size,
        data_bytes=meter.written,
        file_size=os.path.getsize(destination),
    )


def _copy_pieces(reader: SourceReader, fd: int, meter: Meter) -> None:
    """Write every non-zero piece at its own offset (raw and fixed layouts), on worker threads."""

    def copy(piece: Piece) -> int:
        scanned = reader.scan(piece)
        if scanned.zero:
            return 0
        reader.copy(scanned, fd, piece.offset)
        return piece.length

    with worker_pool() as pool:
        for piece, written in zip(reader.pieces, in_order(pool, copy, reader.pieces), strict=True):
            meter.written += written
            meter.add(piece.length)


def _write_dynamic(
    reader: SourceReader,
    fd: int,
    destination: str,
    size: int,
    block_size: int,
    uid: bytes,
    stamp: int,
    meter: Meter,
) -> None:
    """Blocks are laid out in disk order as their first non-zero piece comes; workers check the
    pieces ahead, the copies go out from here (in file order, so the layout is reproducible).

    Each block's data starts on a 4 KiB boundary of the file (its bitmap just before), as Windows
    lays blocks out: page-aligned data is what lets copy_file_range move whole pages when such
    an image is converted back to raw.
    """
    head, footer = sparse_image_bytes(destination, size, block_size, uid, stamp)
    entries = -(-size // block_size)
    bat = array("I", [UNALLOCATED]) * entries
    bitmap_size = rules.bitmap_bytes(block_size)
    # every sector present (as qemu writes it): what a block holds is exactly what was written
    sectors = block_size // SECTOR
    bitmap = b"\xff" * (sectors // 8) + (bytes([(0xFF00 >> (sectors % 8)) & 0xFF]) if sectors % 8 else b"")
    bitmap += bytes(bitmap_size - len(bitmap))
    cursor = round_up(len(head))
    with worker_pool() as pool:
        for scanned in in_order(pool, reader.scan, reader.pieces):
            piece = scanned.piece
            meter.add(piece.length)
            if scanned.zero:
                continue
            block, in_block = divmod(piece.offset, block_size)
            if bat[block] == UNALLOCATED:
                start = round_up(cursor + bitmap_size, DATA_ALIGNMENT) - bitmap_size
                bat[block] = start // SECTOR
                pwrite_all(fd, start, bitmap)
                cursor = start + bitmap_size + block_size
            reader.copy(scanned, fd, bat[block] * SECTOR + bitmap_size + in_block)
            meter.written += piece.length
    if sys.byteorder == "little":
        bat.byteswap()
    table = bytearray(head)
    table[BAT_OFFSET : BAT_OFFSET + 4 * entries] = bat.tobytes()
    pwrite_all(fd, 0, table)
    pwrite_all(fd, cursor, footer)
