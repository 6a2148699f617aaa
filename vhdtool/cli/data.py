"""A disk's data: convert, map, compare."""

from __future__ import annotations

import sys

import click

from vhdtool import render
from vhdtool.cli import options
from vhdtool.errors import VhdError

_FORMATS = ["vhd", "raw", "qcow2", "vmdk", "vhdx", "vdi", "qed"]  # the last five through qemu-img


@click.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("destination", type=click.Path(dir_okay=False))
@click.option(
    "-O",
    "--output-format",
    type=click.Choice(_FORMATS),
    help="Default: named by DESTINATION's extension (.vhd, .qcow2, .vmdk, .vhdx, .vdi, .qed), else raw.",
)
@click.option("-f", "--source-format", type=click.Choice(_FORMATS), help="Default: probed.")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), help="VHD type. Default: dynamic.")
@click.option("--block-size", help="Dynamic VHD block size (power of two >= 512K). Default 2M.")
@click.option(
    "--for",
    "target",
    type=click.Choice(["azure", "hyper-v"]),
    help="azure: a fixed VHD, size rounded up to a whole MiB; hyper-v: New-VHD's creator fields, "
    "a warning for a block size it does not offer.",
)
@click.option("--force", is_flag=True, help="Overwrite DESTINATION if it exists (flushed before it is replaced).")
@options.SYNC
@options.QUIET
@options.JSON
def convert(
    source: str,
    destination: str,
    output_format: str | None,
    source_format: str | None,
    disk_type: str | None,
    block_size: str | None,
    target: str | None,
    force: bool,
    sync: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Copy a raw file or any VHD (a chain is flattened) into a raw file or a new VHD.

    Other formats (qcow2, vmdk, vhdx, vdi, qed) in and out go through qemu-img; a VHD chain is
    handed to it over vhdtool's NBD server (qemu reads no VHD parents), so it arrives flattened.
    Zero runs are skipped: raw output is sparse, a dynamic VHD gets no block for them.
    Crash safety: DESTINATION is written beside itself and renamed into place, so an interrupted
    convert (Ctrl-C included) leaves no DESTINATION at all. A file it replaces (--force) is
    flushed first, so a power cut leaves the old file or the new one; a new DESTINATION is left
    to the page cache, as qemu-img convert does, unless --sync flushes it too.

    Exit status: 0 done, 1 error, 64 bad options (a format or extension vhdtool cannot write).
    """
    from vhdtool.ops.convert import convert as convert_image
    from vhdtool.ops.targets import hyper_v_warning

    caution = hyper_v_warning(options.parse_size(block_size)) if target == "hyper-v" else None
    if caution:
        render.warning(caution)
    with options.progress("converting", not (quiet or as_json)) as progress:
        done = convert_image(
            source,
            destination,
            output_format=output_format,
            source_format=source_format,
            disk_type=disk_type,
            block_size=options.parse_size(block_size, "block size"),
            overwrite=force,
            progress=progress,
            target=target,
            sync=sync,
        )
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        what = f"{done.type} VHD" if done.type else done.format
        render.line(
            f"converted {source} -> {destination} ({what}, {render.human_size(done.size)}, "
            f"{render.human_size(done.data_bytes)} of data)"
        )


@click.command(name="map")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-f", "--format", "fmt", type=click.Choice(["vhd", "raw"]), help="Default: probed.")
@click.option("--json", "as_json", is_flag=True, help="qemu-img map --output=json's shape, plus 'file'.")
@options.QUIET
def map_command(path: str, fmt: str | None, as_json: bool, quiet: bool) -> None:
    """List the runs of the disk that hold data, and which file of the chain holds each.

    A child whose parent is missing is mapped as far as it goes (the rest: 'the missing parent').
    """
    from vhdtool.ops.map import map_inspect, map_json

    with options.progress("mapping", not (quiet or as_json)) as progress:
        entries, warnings = map_inspect(path, fmt, progress)
    for w in warnings:
        render.warning(w)
    if as_json:
        render.print_json_lines([map_json(e) for e in entries])
        return
    render.map_table(entries)


@click.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("-f", "a_format", type=click.Choice(["vhd", "raw"]), help="Format of A. Default: probed.")
@click.option("-F", "b_format", type=click.Choice(["vhd", "raw"]), help="Format of B. Default: probed.")
@click.option("-s", "--strict", is_flag=True, help="Disks of different sizes differ.")
@options.QUIET
@options.JSON
def compare(
    a: str, b: str, a_format: str | None, b_format: str | None, strict: bool, quiet: bool, as_json: bool
) -> None:
    """Compare what two disks read (either raw or VHD), like qemu-img compare.

    Exit status: 0 identical, 1 different (the first differing offset is printed), 2 error.
    """
    from vhdtool.ops.compare import compare as compare_images

    try:
        with options.progress("comparing", not (quiet or as_json)) as progress:
            result = compare_images(a, b, a_format=a_format, b_format=b_format, strict=strict, progress=progress)
    except (VhdError, OSError) as e:  # qemu-img compare's convention: 2 is an error, 1 a difference
        render.error(str(e) if isinstance(e, VhdError) else f"{e.filename + ': ' if e.filename else ''}{e.strerror}")
        sys.exit(2)
    if as_json:
        render.print_json(result.as_json())
    elif not quiet:
        if result.size_mismatch:
            render.line(f"{'Strict mode: ' if strict else 'Warning: '}Image size mismatch!")
        if result.offset is not None:
            render.line(f"Content mismatch at offset {result.offset}!")
        elif result.identical:
            render.line("Images are identical.")
    sys.exit(0 if result.identical else 1)
