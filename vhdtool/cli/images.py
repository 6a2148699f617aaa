"""One image at a time: create, info, check, repair, reset-id, resize, compact."""

from __future__ import annotations

import sys

import click

from vhdtool import render
from vhdtool.cli import options


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--size", "-s", help="Virtual size: bytes or 512M, 127G, 2T (binary units). Default 127G.")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), help="Default: dynamic.")
@click.option("--block-size", help="Dynamic/differencing block size, a power of two >= 512K. Default 2M.")
@click.option("--parent", type=click.Path(dir_okay=False), help="Make a differencing disk over PARENT.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists (flushed before it is replaced).")
@options.SYNC
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(
    path: str,
    size: str | None,
    disk_type: str | None,
    block_size: str | None,
    parent: str | None,
    force: bool,
    sync: bool,
    as_json: bool,
) -> None:
    """Create a VHD: a 127 GiB dynamic disk unless told otherwise.

    The file is written beside PATH and renamed into place: an interrupted create leaves nothing.
    Like qemu-img create, a new file is left to the page cache unless --sync flushes it.
    """
    from vhdtool.ops.create import create as create_image

    created = create_image(
        path,
        size=options.parse_size(size),
        type=disk_type,
        parent=parent,
        block_size=options.parse_size(block_size, "block size"),
        overwrite=force,
        sync=sync,
    )
    render.created(created, as_json)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img's key names.")
@click.option("--chain", is_flag=True, help="Describe every image of the differencing chain.")
@click.option("-U", "--force-share", is_flag=True, help="Read an image a writer holds (its figures may be changing).")
def info(path: str, as_json: bool, chain: bool, force_share: bool) -> None:
    """Show what an image is: type, sizes, creator, geometry, blocks, checksums, parent."""
    from vhdtool.ops.info import image_info

    render.image_info(image_info(path, chain=chain, share=force_share), as_json, chain)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img check's key names.")
@click.option(
    "--for",
    "target",
    type=click.Choice(["azure", "hyper-v"]),
    help="Also judge whether this platform takes the disk, naming each reason it would not.",
)
def check(path: str, as_json: bool, target: str | None) -> None:
    """Validate footers, header, checksums, BAT, bitmaps and the parent link.

    Exit status: 0 clean, 2 corruption, 3 leaks only, 1 error (like qemu-img check): the parent
    is missing, or with --for the platform would not take the disk.
    """
    from vhdtool.ops.check import check_image
    from vhdtool.ops.targets import unsuitable

    report = check_image(path)
    reasons = unsuitable(path, target) if target else []
    if as_json and target:
        render.print_json({**report.as_json(), "target": target, "target-ok": not reasons, "target-reasons": reasons})
    else:
        render.check_report(report, as_json)
    if target and not as_json:
        for reason in reasons:
            render.line(f"not for {target}: {reason}")
        if not reasons:
            render.line(f"{path}: {target} takes this disk" + ("" if report.exit_code == 0 else " once it is repaired"))
    sys.exit(report.exit_code or (1 if reasons else 0))


@click.command(context_settings={"ignore_unknown_options": True})  # so that "-1G" is a SIZE, not an option
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("size")
@click.option("--force", is_flag=True, help="Shrink even if data is stored past the new end (it is lost).")
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Look for children here too.")
@options.JSON
def resize(path: str, size: str, force: bool, children: tuple[str, ...], as_json: bool) -> None:
    """Grow or shrink a fixed or dynamic disk to SIZE (absolute, or +1G / -1G relative).

    Differencing disks are refused. Shrinking refuses to drop stored data unless --force: shrink
    the filesystem inside first; it is refused while children (beside PATH or in --children
    folders) read through the disk. In place, ordered writes (Ctrl-C waits for the current step):
    an interrupted dynamic resize leaves the old size with the same content (a shrink: the old or
    the new size); an interrupted fixed grow leaves the new size, its first 512 new bytes possibly
    holding the old footer.
    """
    from vhdtool.ops.resize import resize as resize_image

    done = resize_image(path, size, force=force, children=list(children))
    if as_json:
        render.print_json(done.as_json())
        return
    for w in done.warnings:
        render.warning(w)
    moved = f", {done.moved_blocks} block(s) moved to make room for the BAT" if done.moved_blocks else ""
    render.line(f"resized {path}: {done.old_size} -> {done.new_size} bytes{moved}")


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@options.QUIET
@options.JSON
def compact(path: str, quiet: bool, as_json: bool) -> None:
    """Drop blocks that read as zeros (or as the parent reads them) and shrink the file.

    Refused when the saved-state flag is set. In place, ordered writes: the content never
    changes at any step, so an interrupted compact (Ctrl-C stops at the next batch) leaves the
    same content, at worst with space not yet reclaimed; run it again to finish.
    """
    from vhdtool.ops.compact import compact as compact_image

    with options.progress("scanning blocks", not (quiet or as_json)) as progress:
        done = compact_image(path, progress=progress)
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        render.line(
            f"compacted {path}: {done.dropped_blocks} block(s) dropped, {done.moved_blocks} moved, "
            f"{render.human_size(done.reclaimed)} ({done.reclaimed} bytes) reclaimed"
        )


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only list what would be done.")
@options.JSON
def repair(path: str, dry_run: bool, as_json: bool) -> None:
    """Repair what 'vhdtool check' finds: footers, checksums, bad BAT entries, lost parent, leaks.

    The metadata is saved to PATH.repair-backup first. In place, ordered writes (footer, copy,
    header, BAT, then packing), each leaving a readable image; Ctrl-C waits until the end.
    Exit status: 0 when the image checks clean afterwards, 2 when damage remains.
    """
    from vhdtool.ops.repair import repair as repair_image

    done = repair_image(path, dry_run=dry_run)
    if as_json:
        render.print_json(done.as_json())
    else:
        if done.backup:
            render.line(f"metadata saved to {done.backup}")
        for action in done.actions:
            render.line(("would: " if dry_run else "") + action)
        for problem in done.unrepaired:
            render.warning(f"not repaired: {problem}")
        if not done.actions and not done.unrepaired:
            render.line(f"{path}: nothing to repair")
    sys.exit(done.exit_code)


@click.command(name="reset-id")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Update the children in this folder.")
@click.option("--uuid", "new_uuid", help="Use this UUID (e.g. to finish an interrupted run).")
@options.JSON
def reset_id(path: str, children: tuple[str, ...], new_uuid: str | None, as_json: bool) -> None:
    """Give PATH a new UUID, so that copies of a disk do not collide.

    With --children DIR the differencing disks in DIR that point at PATH are updated too. In
    place, Ctrl-C held back: both footers, then each child's header; the new UUID is printed so
    that a run cut by a power failure can be finished with --uuid.
    """
    from vhdtool.ops.reset_id import reset_id as reset_image_id

    done = reset_image_id(path, children=list(children), new_uuid=new_uuid)
    if as_json:
        render.print_json(done.as_json())
        return
    render.line(f"{path}: UUID {done.old_uuid} -> {done.new_uuid}")
    for kid in done.children:
        render.line(f"updated child {kid}")
    for kid in done.dangling:
        render.warning(f"{kid} refers to the old UUID; run reset-id with --children to update it")
