"""VHD Mount over FUSE with an undo disk: mount, umount."""

from __future__ import annotations

import sys
from typing import Any

import click

from vhdtool import render
from vhdtool.cli import options


@click.command(name="mount")
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@click.argument("mountpoint", required=False, type=click.Path())
@click.option("--list", "list_mounts", is_flag=True, help="Show what vhdtool has mounted (stale mounts included).")
@click.option("--raw", is_flag=True, help="Show MOUNTPOINT/disk and MOUNTPOINT/p1..pN as files, not a filesystem.")
@click.option("--partition", type=click.IntRange(min=1), help="Partition number (default: the first with a fs).")
@click.option("--driver", type=click.Choice(["kernel", "fuse"]), help="Default: kernel when root and it knows the fs.")
@click.option("--read-only", is_flag=True, help="Write nothing.")
@click.option("--no-undo", is_flag=True, help="Write straight into IMAGE instead of an undo disk.")
@click.option("--undo-dir", type=click.Path(file_okay=False), help="Put the undo disk here (default: beside IMAGE).")
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted or interrupted.")
@options.JSON
def mount_command(
    image: str | None,
    mountpoint: str | None,
    list_mounts: bool,
    raw: bool,
    partition: int | None,
    driver: str | None,
    read_only: bool,
    no_undo: bool,
    undo_dir: str | None,
    foreground: bool,
    as_json: bool,
) -> None:
    """Mount the filesystem inside IMAGE at MOUNTPOINT (an empty folder), read-write.

    Writes go to an undo disk (IMAGE.undo.vhd, the one the file commands' --undo use; one left
    by them is carried on) until 'vhdtool umount --commit' merges it into IMAGE or '--discard'
    drops it. Returns once the mount is usable; the server runs on.
    """
    from vhdtool.mount import control, registry
    from vhdtool.mount.spec import prepare

    if list_mounts:
        if image or mountpoint:
            raise click.UsageError("--list takes no IMAGE or MOUNTPOINT")
        found = registry.records()
        if as_json:
            render.print_json([r.as_json() for r in found])
            return
        if not found:
            render.line("nothing is mounted by vhdtool")
            return
        rows = [
            [
                r.mountpoint,
                r.image,
                "raw view" if r.raw else f"p{r.partition} {r.fs} ({r.driver})",
                r.undo if r.mode == "undo" else r.mode,
                registry.status(r),
            ]
            for r in found
        ]
        render.table(["Mountpoint", "Image", "What", "Writes to", "State"], rows)
        return
    if image is None or mountpoint is None:
        raise click.UsageError("IMAGE and MOUNTPOINT are required (or --list)")
    spec = prepare(
        image,
        mountpoint,
        raw=raw,
        partition=partition,
        driver=driver,
        read_only=read_only,
        undo=not no_undo,
        undo_dir=undo_dir,
    )

    def mounted(record: Any) -> None:
        if as_json:
            render.print_json(record.as_json())
        else:
            render.line(control.describe(record), flush=True)

    if foreground:
        reason = control.serve_foreground(spec, mounted)
        if registry.load(spec.mountpoint) is not None:
            render.warning(
                f"stopped ({reason}); the undo disk waits: 'vhdtool umount --commit|--discard {spec.mountpoint}'"
            )
        elif not as_json:
            render.line(f"stopped ({reason})")
        return
    record, _ = control.spawn(spec)
    mounted(record)


@click.command(name="umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--commit", "action", flag_value="commit", help="Merge the undo disk into the image.")
@click.option("--discard", "action", flag_value="discard", help="Delete the undo disk: the image stays as it was.")
@options.QUIET
@options.JSON
def umount_command(mountpoint: str, action: str | None, quiet: bool, as_json: bool) -> None:
    """Unmount a vhdtool mount (a stale one too) and commit or discard its undo disk.

    Without --commit or --discard, asks on a terminal; elsewhere refuses and changes nothing.
    """
    from vhdtool.mount import control

    def ask(record: Any) -> str | None:
        if as_json or not sys.stdin.isatty():
            return None
        choice = render.ask(
            f"Changes to {record.image} are in its undo disk: commit, discard or cancel?",
            ["commit", "discard", "cancel"],
            default="cancel",
        )
        return None if choice == "cancel" else choice

    with options.progress("committing", not (quiet or as_json)) as progress:
        done = control.unmount(mountpoint, action, ask=ask, progress=progress)
    if done.was_stale:
        render.warning(f"{done.record.mountpoint}: its mount server had died; cleaned up the stale mount")
    if as_json:
        render.print_json(
            {
                "mountpoint": done.record.mountpoint,
                "image": done.record.image,
                "action": done.action,
                "committed-bytes": done.committed,
                "was-stale": done.was_stale,
                "already": done.earlier,
            }
        )
    elif not quiet:
        outcome = {
            "commit": f"; committed {render.human_size(done.committed)} into {done.record.image}",
            "discard": f"; discarded the undo disk, {done.record.image} is unchanged",
        }.get(done.action or "", "")
        render.line(f"{'already ' if done.earlier else ''}unmounted {done.record.mountpoint}{outcome}")
