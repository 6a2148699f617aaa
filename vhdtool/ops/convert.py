"""`vhdtool convert`: copy any VHD (a chain flattened) or raw image into a raw file or a new VHD;
other formats in and out go through qemu-img (``ops.foreign``).

Only runs some layer holds data for are read (a raw source is walked with SEEK_DATA/SEEK_HOLE,
a VHD by its BATs), in pieces of up to 4 MiB; pieces that are all zeros are not written, so a
raw output is a sparse file and a dynamic VHD gets no block for them. Where each piece goes in
a VHD output is ``format.streamwriter``'s business (blocks laid out in disk order, in one pass).

The output is written to a temporary file beside the destination and renamed into place: an
interrupted convert leaves no destination at all. A destination that is replaced is flushed
(fsync) before the rename, so a power cut leaves the old file or the new one. A new destination
is flushed only when asked (``sync``), as qemu-img convert flushes only with ``-t writeback``;
then each piece's writeback is started as soon as it is written, so that the copy and the
flush overlap.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.blockdev import BlockDevice, Placement
from vhdtool.format.layout import needs_sync, new_unique_id, write_new_file
from vhdtool.format.rules import SECTOR
from vhdtool.format.sparselayout import round_up
from vhdtool.format.streamwriter import DynamicWriter, FixedWriter
from vhdtool.ops import foreign
from vhdtool.ops.datapath import (
    Meter,
    ProgressCallback,
    Turns,
    in_order,
    read_grid,
    worker_pool,
)
from vhdtool.ops.devices import close_device, open_device
from vhdtool.ops.sources import Scanned, SourceReader
from vhdtool.ops.targets import TARGETS

OUTPUT_FORMATS = ("vhd", "raw", *foreign.FORMATS)
VHD_TYPES = ("dynamic", "fixed")


class Converted(NamedTuple):
    source: str
    destination: str
    format: str
    """'vhd', 'raw' or a format qemu-img writes."""
    type: str | None
    """'dynamic' or 'fixed' for a VHD, None for raw."""
    size: int
    """Virtual size of the output."""
    data_bytes: int
    """Bytes of data written (zero runs are not)."""
    file_size: int

    def as_json(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in self._asdict().items()}


def output_format_for(destination: str, output_format: str | None, disk_type: str | None) -> str:
    """-O as given; else the format the extension names (.vhd, .qcow2, .vmdk, .vhdx, .vdi, .qed;
    one vhdtool cannot make is refused), 'vhd' when a VHD type was asked for; else 'raw'."""
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {output_format!r} (choose {', '.join(OUTPUT_FORMATS)})")
        if output_format != "vhd" and disk_type is not None:
            raise UsageError(f"--type applies to VHD output, not {output_format}")
        return output_format
    named = foreign.format_of_extension(destination)
    if named is not None:
        if disk_type is not None:
            raise UsageError(f"--type applies to VHD output, not {named}")
        return named
    if disk_type is not None or destination.lower().endswith(".vhd"):
        return "vhd"
    return "raw"


def _settle_target(target: str | None, fmt: str, disk_type: str | None, block_size: int | None) -> str | None:
    """The VHD type ``--for`` implies, refusing what contradicts it."""
    if target is None:
        return disk_type
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r} (choose {', '.join(TARGETS)})")
    if fmt != "vhd":
        raise UsageError(f"--for {target} makes a VHD, not {fmt}")
    if target == "azure":
        if disk_type == "dynamic" or block_size is not None:
            raise UsageError("--for azure makes a fixed VHD (Azure takes no dynamic disk)")
        return "fixed"
    return disk_type


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
    target: str | None = None,
    sync: bool = False,
) -> Converted:
    """Convert ``source`` (a path, probed as VHD, raw or a format qemu-img reads unless
    ``source_format`` says, or an open BlockDevice, which stays open) into ``destination``.

    ``target`` 'azure' makes a fixed VHD of a whole number of MiB (the size rounded up, the data
    kept); 'hyper-v' a VHD as Hyper-V's New-VHD makes it (``targets.hyper_v_warning`` says when
    the block size asked for is not one it offers).

    ``output_format`` 'vhd'/'raw' (default from the destination's extension), ``disk_type``
    'dynamic' (default) or 'fixed', ``block_size`` for dynamic output (default 2 MiB).
    ``progress(done, total)`` is called as data is copied. Refuses an existing destination
    unless ``overwrite``. ``unique_id`` (16 bytes) and ``timestamp`` (Unix time) make a VHD output
    byte-for-byte reproducible. ``sync`` flushes a new destination to the disk before it is
    renamed into place (a destination that is replaced is flushed either way).
    """
    destination = os.fspath(destination)
    fmt = output_format_for(destination, output_format, disk_type)
    disk_type = _settle_target(target, fmt, disk_type, block_size)
    size_unit = rules.MiB if target == "azure" else SECTOR
    creator = rules.HYPER_V_CREATOR if target == "hyper-v" else rules.VHDTOOL_CREATOR
    disk_type = disk_type or "dynamic"
    if disk_type not in VHD_TYPES:
        raise UsageError(f"unknown VHD type {disk_type!r} (choose dynamic or fixed)")
    if block_size is not None:
        if fmt != "vhd" or disk_type != "dynamic":
            raise UsageError("--block-size applies to dynamic VHD output only")
        rules.validate_block_size(block_size)
    if isinstance(source, BlockDevice):
        _refuse_same_file(source.path, destination)
        dev, owned = source, False
    else:
        source = os.fspath(source)
        _refuse_same_file(source, destination)
        other = source_format if source_format in foreign.FORMATS else None
        if source_format is None:
            other = foreign.source_format(source)
        if other is not None:
            return _from_foreign(
                source, other, destination, fmt, disk_type, block_size, overwrite, progress, size_unit, sync
            )
        dev, owned = open_device(source, source_format), True
    try:
        return _convert(
            dev, destination, fmt, disk_type, block_size, overwrite, unique_id, timestamp, progress, size_unit,
            creator, sync,
        )  # fmt: skip
    finally:
        if owned:
            close_device(dev)


def _from_foreign(
    source: str,
    source_format: str,
    destination: str,
    fmt: str,
    disk_type: str,
    block_size: int | None,
    overwrite: bool,
    progress: ProgressCallback | None,
    size_unit: int,
    sync: bool,
) -> Converted:
    """A format qemu-img reads: into a VHD that vhdtool lays out, or to any other format by qemu-img alone."""
    size = foreign.virtual_size(source, source_format)
    if fmt == "vhd":
        size = round_up(size, size_unit)
        rules.validate_virtual_size(size, disk_type)
        foreign.import_image(
            source, source_format, destination, size, disk_type, block_size, overwrite, progress, sync=sync
        )
    else:
        foreign.convert_with_qemu(source, source_format, destination, fmt, size, overwrite, progress, sync=sync)
    return Converted(
        source=source,
        destination=destination,
        format=fmt,
        type=disk_type if fmt == "vhd" else None,
        size=size,
        data_bytes=os.stat(destination).st_blocks * 512,
        file_size=os.path.getsize(destination),
    )


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
    size_unit: int = SECTOR,
    creator: rules.Creator = rules.VHDTOOL_CREATOR,
    sync: bool = False,
) -> Converted:
    if os.path.isdir(destination):
        raise UsageError(f"{destination}: is a directory")
    size = src.size
    if fmt in foreign.FORMATS:
        foreign.export(src, destination, fmt, overwrite, progress, sync=sync)
        return Converted(
            src.path, destination, fmt, None, size, os.stat(destination).st_blocks * 512, os.path.getsize(destination)
        )
    if fmt == "vhd":
        # a VHD holds whole sectors (Azure: whole MiB); the tail reads as zeros, as in qemu-img
        size = round_up(src.size, size_unit)
        rules.validate_virtual_size(size, disk_type)
    grid = read_grid(src)
    if fmt == "vhd" and disk_type == "dynamic":
        block_size = block_size or rules.DEFAULT_BLOCK_SIZE
        grid = min(grid, block_size)
    sync = needs_sync(destination, sync)
    reader = SourceReader(src, grid, write_behind=sync)
    return _write(
        reader, src, destination, fmt, disk_type, size, block_size, overwrite, unique_id, timestamp, progress, creator,
        sync,
    )  # fmt: skip


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
    creator: rules.Creator = rules.VHDTOOL_CREATOR,
    sync: bool = False,
) -> Converted:
    meter = Meter(progress, sum(p.length for p in reader.pieces))
    uid = unique_id or new_unique_id()
    stamp = rules.to_vhd_timestamp(timestamp)

    def write(fd: int) -> None:
        if fmt == "raw":
            os.ftruncate(fd, size)
            _copy_pieces(reader, fd, meter)
        elif disk_type == "fixed":
            fixed = FixedWriter(fd, size, uid, stamp, creator)
            _copy_pieces(reader, fd, meter)
            fixed.finish()
        else:
            assert block_size is not None
            dynamic = DynamicWriter(fd, destination, size, block_size, uid, stamp, creator)
            _copy_in_order(reader, dynamic, meter)
            dynamic.finish()

    write_new_file(destination, write, overwrite, sync=sync)
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
    if not reader.pieces:  # an empty disk: no threads to start (nor their module to import)
        return

    def copy(piece: Placement) -> int:
        scanned = reader.read(piece)
        if scanned.zero:
            return 0
        reader.write(scanned, fd, piece.offset)
        return piece.length

    with worker_pool() as pool:
        for piece, written in zip(reader.pieces, in_order(pool, copy, reader.pieces), strict=True):
            meter.written += written
            meter.add(piece.length)


def _copy_in_order(reader: SourceReader, writer: DynamicWriter, meter: Meter) -> None:
    """Workers read and check the pieces and write them, each from its own buffer; only the
    placing is done in disk order, one piece at a time, so that blocks are laid out in disk order
    and the layout is reproducible."""
    turns = Turns()

    def copy(numbered: tuple[int, Placement]) -> int:
        number, piece = numbered
        scanned: Scanned | None = None
        try:
            scanned = reader.read(piece)
        finally:  # a piece that fails still takes its turn, or the pieces after it would wait forever
            with turns.turn(number):
                at = None if scanned is None or scanned.zero else writer.place(piece.offset)
        if scanned is None or at is None:
            return 0
        reader.write(scanned, writer.fd, at)
        return piece.length

    with worker_pool() as pool:
        for piece, written in zip(reader.pieces, in_order(pool, copy, enumerate(reader.pieces)), strict=True):
            meter.written += written
            meter.add(piece.length)
