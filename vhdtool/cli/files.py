"""Filesystems inside images: build, and the file commands ls, cat, cp, rm, mkdir."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from vhdtool import render
from vhdtool.cli import options


def _owner_option(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, sep, gid = text.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep):
        raise click.BadParameter(f"{text!r} is not UID:GID (numbers, like 0:0)", param_hint="--owner")
    return int(uid), int(gid)


@click.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--from-dir", "from_dir", required=True, type=click.Path(file_okay=False), help="Folder to put in.")
@click.option("--size", "-s", default="auto", show_default=True, help="Virtual disk size (512M, 4G) or auto.")
@click.option("--fs", type=click.Choice(["ext4", "ext3", "ext2", "vfat", "ntfs"]), default="ext4", show_default=True)
@click.option("--table", type=click.Choice(["gpt", "mbr", "none"]), default="gpt", show_default=True)
@click.option("--label", help="Filesystem label (also the GPT partition name).")
@click.option("--uuid", "fs_uuid", help="Filesystem UUID (ext), volume id XXXX-XXXX (FAT) or serial (NTFS).")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), default="dynamic", show_default=True)
@click.option("--owner", help="Give every file this numeric UID:GID (default: the folder's own).")
@click.option("--reproducible", is_flag=True, help="Fixed ids and times from SOURCE_DATE_EPOCH: identical bytes.")
@click.option("--force", "overwrite", is_flag=True, help="Replace OUT if it exists.")
@options.QUIET
@options.JSON
def build(
    out: str, from_dir: str, size: str, disk_type: str, owner: str | None, quiet: bool, as_json: bool, **choices: Any
) -> None:
    """Build a VHD holding a partition with a filesystem made from a folder (no root, no FUSE)."""
    from vhdtool.ops.build import build as build_image

    # the other options (--fs, --table, --label, --uuid, --reproducible, --force) carry the names
    # of ops.build's keywords, so they pass through as they are
    with options.progress("building", not (quiet or as_json)) as progress:
        built = build_image(
            out,
            from_dir,
            size=None if size == "auto" else options.parse_size(size),
            disk_type=disk_type,
            owner=_owner_option(owner),
            progress=progress,
            **choices,
        )
    for w in built.warnings:
        render.warning(w)
    if as_json:
        render.print_json(built.as_json())
    else:
        render.line(
            f"built {out}: {render.human_size(built.size)} {disk_type} VHD, {built.table} table, "
            f"{built.filesystem} with {built.files} files ({render.human_size(built.data_bytes)} of data)"
        )


_PARTITION = click.option("--partition", type=int, help="Partition number (default: the first with a filesystem).")
_UNDO = click.option("--undo", is_flag=True, help="Write into (or read through) the undo disk IMAGE.undo.vhd.")


def _file_command(name: str, *own_options: Callable[[Any], Any], metavar: str = "IMAGE:PATH") -> Callable[[Any], Any]:
    """A command on one path inside an image: TARGET, the command's own options, --partition, --undo."""

    def decorate(function: Callable[..., None]) -> click.Command:
        for decorator in reversed([click.argument("target", metavar=metavar), *own_options, _PARTITION, _UNDO]):
            function = decorator(function)
        return click.command(name=name)(function)

    return decorate


def _refuse_second_undo_disk(target: str, undo: bool) -> None:
    """A write with --undo makes IMAGE.undo.vhd over IMAGE; a mount of IMAGE whose undo disk lies
    elsewhere (mount --undo-dir) would then share its parent with it, and committing either one
    would change what the other reads. The mount registry (above ops/) knows such mounts."""
    from vhdtool.errors import RefusedError
    from vhdtool.mount.registry import find_pending_over
    from vhdtool.ops.files import parse_image_path
    from vhdtool.ops.overlay import undo_path

    if not undo:
        return
    located = parse_image_path(target, require=False)
    if located is None:
        return
    mount = find_pending_over(located.image)
    if mount is not None and mount.undo and os.path.realpath(mount.undo) != os.path.realpath(undo_path(located.image)):
        raise RefusedError(
            f"{located.image}: mounted at {mount.mountpoint} with its undo disk {mount.undo}; a second undo disk "
            f"over the same image would change what that one reads when either is committed (umount it first)"
        )


def _file_warnings(warnings: list[str]) -> None:
    for w in warnings:
        render.warning(w)


@_file_command(
    "ls",
    click.option("-l", "long", is_flag=True, help="Long listing: type, mode, owner, size."),
    metavar="IMAGE[:PATH]",
)
@options.JSON
def ls_command(target: str, long: bool, partition: int | None, undo: bool, as_json: bool) -> None:
    """List a folder (or show a file) inside an image's filesystem."""
    from vhdtool.ops.files import ls

    _, entries = ls(target, partition=partition, undo=undo)
    if as_json:
        render.print_json(
            [
                {"name": e.name, "type": e.kind, "size": e.size, "mode": e.mode, "uid": e.uid, "gid": e.gid}
                for e in entries
            ]
        )
        return
    for e in entries:
        name = e.name + ("/" if e.kind == "dir" else "")
        if long:
            mode = f"{e.mode:04o}" if e.mode is not None else "-"
            owner = f"{e.uid}:{e.gid}" if e.uid is not None else "-"
            render.line(f"{e.kind:<7} {mode:>5} {owner:>11} {e.size:>12} {name}")
        else:
            render.line(name)


@_file_command("cat")
def cat_command(target: str, partition: int | None, undo: bool) -> None:
    """Write a file inside an image to standard output."""
    from vhdtool.ops.files import cat

    cat(target, render.binary_stdout(), partition=partition, undo=undo)


@click.command(name="cp")
@click.argument("source")
@click.argument("destination")
@_PARTITION
@_UNDO
@options.QUIET
def cp_command(source: str, destination: str, partition: int | None, undo: bool, quiet: bool) -> None:
    """Copy a file or folder into an image (DESTINATION is IMAGE:PATH) or out of one (SOURCE is)."""
    from vhdtool.ops.files import cp

    _refuse_second_undo_disk(destination, undo)
    with options.progress("copying", not quiet) as progress:
        copied = cp(source, destination, partition=partition, undo=undo, progress=progress)
    _file_warnings(copied.warnings)


@_file_command("rm", click.option("-r", "--recursive", is_flag=True, help="Remove a folder and everything in it."))
def rm_command(target: str, recursive: bool, partition: int | None, undo: bool) -> None:
    """Remove a file or folder inside an image."""
    from vhdtool.ops.files import rm

    _refuse_second_undo_disk(target, undo)
    rm(target, recursive=recursive, partition=partition, undo=undo)


@_file_command(
    "mkdir",
    click.option("-p", "--parents", is_flag=True, help="Make missing parent folders too; no error if it exists."),
)
def mkdir_command(target: str, parents: bool, partition: int | None, undo: bool) -> None:
    """Make a folder inside an image."""
    from vhdtool.ops.files import mkdir

    _refuse_second_undo_disk(target, undo)
    mkdir(target, parents=parents, partition=partition, undo=undo)
