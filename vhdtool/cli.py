"""The click commands: each parses its options, calls one library function, and renders the result.

Errors: a VhdError leaves through ``main()`` as one line on stderr and its exit code; rendering
(tables, JSON, progress) lives in ``vhdtool.render``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from vhdtool import __version__, render
from vhdtool.errors import VhdError
from vhdtool.format import rules

if TYPE_CHECKING:
    from vhdtool.vss.report import Report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="vhdtool")
def cli() -> None:
    """vhdtool: create, inspect, repair, convert, mount, serve and boot VHD disk images."""


def _size_option(text: str | None, what: str = "size") -> int | None:
    return None if text is None else rules.parse_absolute_size(text, what)


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{text!r} is not a permission mode (0 to 0777)")
    return mode


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--size", "-s", help="Virtual size: bytes or 512M, 127G, 2T (binary units). Default 127G.")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), help="Default: dynamic.")
@click.option("--block-size", help="Dynamic/differencing block size, a power of two >= 512K. Default 2M.")
@click.option("--parent", type=click.Path(dir_okay=False), help="Make a differencing disk over PARENT.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(
    path: str,
    size: str | None,
    disk_type: str | None,
    block_size: str | None,
    parent: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Create a VHD: a 127 GiB dynamic disk unless told otherwise.

    The file is written beside PATH and renamed into place: an interrupted create leaves nothing.
    """
    from vhdtool.ops.create import create as create_image

    created = create_image(
        path,
        size=_size_option(size),
        type=disk_type,
        parent=parent,
        block_size=_size_option(block_size, "block size"),
        overwrite=force,
    )
    render.created(created, as_json)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img's key names.")
@click.option("--chain", is_flag=True, help="Describe every image of the differencing chain.")
@click.option("-U", "--force-share", is_flag=True, help="Read an image a writer holds (its figures may be changing).")
def info(path: str, as_json: bool, chain: bool, force_share: bool) -> None:
    """Show what an image is: type, sizes, creator, geometry, blocks, checksums, parent."""
    from vhdtool.ops.info import image_info

    render.image_info(image_info(path, chain=chain, share=force_share), as_json, chain)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img check's key names.")
@click.option("--for", "target", type=click.Choice(["azure", "hyper-v"]),
              help="Also judge whether this platform takes the disk, naming each reason it would not.")
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
            print(f"not for {target}: {reason}")
        if not reasons:
            print(f"{path}: {target} takes this disk" + ("" if report.exit_code == 0 else " once it is repaired"))
    sys.exit(report.exit_code or (1 if reasons else 0))


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Listen on this unix socket.")
@click.option("--bind", help="Listen on TCP at this address (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port (default 10809; 0 picks a free one).")
@click.option("--read-only", is_flag=True, help="Refuse writes.")
@click.option("--export-name", default="", help="Export name (default: the empty, default export).")
@click.option("--snapshot", is_flag=True, help="Write to a temporary differencing layer deleted at exit.")
@click.option("--socket-mode", type=_octal_mode, metavar="MODE", help="The socket's mode, e.g. 0660.")
@click.option("--socket-group", metavar="GROUP", help="The socket's group (name or number).")
def serve(
    image: str,
    socket_path: str | None,
    bind: str | None,
    port: int | None,
    read_only: bool,
    export_name: str,
    snapshot: bool,
    socket_mode: int | None,
    socket_group: str | None,
) -> None:
    """Serve IMAGE and its whole differencing chain over NBD until SIGINT/SIGTERM.

    Prints the URI to connect to (nbd+unix:///?socket=... or nbd://host:port/). A writable
    server on a unix socket registers itself, so that `snapshot create --hypervisor libvirt`
    switches the write layer of a libvirt guest whose disk is that socket (a VHD snapshot).
    """
    from vhdtool.nbd.serve import serve_image

    serve_image(
        image,
        socket_path=socket_path,
        bind=bind,
        port=port,
        read_only=read_only,
        export_name=export_name,
        snapshot=snapshot,
        socket_mode=socket_mode,
        socket_group=socket_group,
        on_listening=lambda uri: click.echo(uri),
    )


# -- image operations (issue 3): each command parses, calls one vhdtool.ops function, renders ----------


@contextlib.contextmanager
def _progress(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """An ops progress(done, total) callback drawing render.progress's bar from the first report."""
    with contextlib.ExitStack() as stack:
        state: dict[str, Any] = {}

        def report(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = stack.enter_context(render.progress(description, total, enabled))
                state["done"] = 0
            state["bar"].advance(done - state["done"])
            state["done"] = done

        yield report


_QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (no progress bar).")


_FORMATS = ["vhd", "raw", "qcow2", "vmdk", "vhdx", "vdi", "qed"]  # the last five through qemu-img


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("destination", type=click.Path(dir_okay=False))
@click.option("-O", "--output-format", type=click.Choice(_FORMATS),
              help="Default: named by DESTINATION's extension (.vhd, .qcow2, .vmdk, .vhdx, .vdi, .qed), else raw.")
@click.option("-f", "--source-format", type=click.Choice(_FORMATS), help="Default: probed.")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), help="VHD type. Default: dynamic.")
@click.option("--block-size", help="Dynamic VHD block size (power of two >= 512K). Default 2M.")
@click.option("--for", "target", type=click.Choice(["azure", "hyper-v"]),
              help="azure: a fixed VHD, size rounded up to a whole MiB; hyper-v: New-VHD's creator fields, "
              "a warning for a block size it does not offer.")
@click.option("--force", is_flag=True, help="Overwrite DESTINATION if it exists (flushed before it is replaced).")
@click.option(
    "--sync",
    is_flag=True,
    help="Flush a new DESTINATION to the disk before it appears (qemu-img convert -t writeback does too).",
)
@_QUIET
@_JSON
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

    caution = hyper_v_warning(_size_option(block_size)) if target == "hyper-v" else None
    if caution:
        render.warning(caution)
    with _progress("converting", not (quiet or as_json)) as progress:
        done = convert_image(
            source,
            destination,
            output_format=output_format,
            source_format=source_format,
            disk_type=disk_type,
            block_size=_size_option(block_size, "block size"),
            overwrite=force,
            progress=progress,
            target=target,
            sync=sync,
        )
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        what = f"{done.type} VHD" if done.type else done.format
        print(
            f"converted {source} -> {destination} ({what}, {render.human_size(done.size)}, "
            f"{render.human_size(done.data_bytes)} of data)"
        )


@cli.command(name="map")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-f", "--format", "fmt", type=click.Choice(["vhd", "raw"]), help="Default: probed.")
@click.option("--json", "as_json", is_flag=True, help="qemu-img map --output=json's shape, plus 'file'.")
@_QUIET
def map_command(path: str, fmt: str | None, as_json: bool, quiet: bool) -> None:
    """List the runs of the disk that hold data, and which file of the chain holds each.

    A child whose parent is missing is mapped as far as it goes (the rest: 'the missing parent').
    """
    from vhdtool.ops.map import map_inspect

    with _progress("mapping", not (quiet or as_json)) as progress:
        entries, warnings = map_inspect(path, fmt, progress)
    for w in warnings:
        render.warning(w)
    if as_json:
        render.print_json_lines([e.as_json() for e in entries])
        return
    # qemu-img map's human format: fixed columns, whole paths (a table would truncate them); C's %#x prints 0 as 0
    print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
    for e in entries:
        if e.parent_missing:
            print(f"{e.start:#x}".ljust(16) + f"{e.length:#x}".ljust(16) + "-".ljust(16) + "(the missing parent)")
        elif not e.zero:
            print("".join(f"{n:#x}".ljust(16) if n else "0".ljust(16) for n in (e.start, e.length, e.offset)) + e.file)


@cli.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("-f", "a_format", type=click.Choice(["vhd", "raw"]), help="Format of A. Default: probed.")
@click.option("-F", "b_format", type=click.Choice(["vhd", "raw"]), help="Format of B. Default: probed.")
@click.option("-s", "--strict", is_flag=True, help="Disks of different sizes differ.")
@_QUIET
@_JSON
def compare(
    a: str, b: str, a_format: str | None, b_format: str | None, strict: bool, quiet: bool, as_json: bool
) -> None:
    """Compare what two disks read (either raw or VHD), like qemu-img compare.

    Exit status: 0 identical, 1 different (the first differing offset is printed), 2 error.
    """
    from vhdtool.ops.compare import compare as compare_images

    try:
        with _progress("comparing", not (quiet or as_json)) as progress:
            result = compare_images(a, b, a_format=a_format, b_format=b_format, strict=strict, progress=progress)
    except (VhdError, OSError) as e:  # qemu-img compare's convention: 2 is an error, 1 a difference
        render.error(str(e) if isinstance(e, VhdError) else f"{e.filename + ': ' if e.filename else ''}{e.strerror}")
        sys.exit(2)
    if as_json:
        render.print_json(result.as_json())
    elif not quiet:
        if result.size_mismatch:
            print(f"{'Strict mode: ' if strict else 'Warning: '}Image size mismatch!")
        if result.offset is not None:
            print(f"Content mismatch at offset {result.offset}!")
        elif result.identical:
            print("Images are identical.")
    sys.exit(0 if result.identical else 1)


@cli.group()
def snapshot() -> None:
    """Consistent snapshots of running guests (freeze, switch write layers, thaw), via hypervisor plugins."""


@snapshot.command(name="create")
@click.option("--hypervisor", default="runner", show_default=True, help="Plugin (see 'snapshot hypervisors').")
@click.option("--guest", "guests", multiple=True, metavar="[PLUGIN:]NAME",
              help="A guest of the group (repeatable); PLUGIN: puts a guest of another plugin in the same group.")
@click.option("--all", "all_guests", is_flag=True, help="Every guest the hypervisor runs.")
@click.option("--quiesce", type=click.Choice(["required", "preferred", "off"]), default="preferred", show_default=True,
              help="required: fail unless every guest's agent freezes; preferred: pause guests without one; "
              "off: pause all (crash-consistent).")
@click.option("--freeze-timeout", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="Seconds for the whole group to freeze.")
@click.option("--hold-timeout", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Seconds the guests may stay frozen while their disks switch layers.")
@click.option("--hypervisor-opt", "hv_opts", multiple=True, metavar="[PLUGIN:]KEY=VALUE",
              help="Plugin option (repeatable); PLUGIN: gives it to that plugin of a mixed group.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
def snapshot_create(
    hypervisor: str,
    guests: tuple[str, ...],
    all_guests: bool,
    quiesce: str,
    freeze_timeout: float,
    hold_timeout: float,
    hv_opts: tuple[str, ...],
    as_json: bool,
) -> None:
    """Snapshot one consistency group. Exits 1 (every guest thawed, nothing snapshotted) if it cannot."""
    _snapshot_create(
        hypervisor, list(guests), all_guests, quiesce, freeze_timeout, hold_timeout, list(hv_opts), as_json
    )


@snapshot.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def snapshot_list(as_json: bool) -> None:
    """The snapshot groups on record and whether their images still exist."""
    _snapshot_list(as_json)


@snapshot.command(name="merge")
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snapshot_merge(snapshot_id: str, as_json: bool) -> None:
    """Fold the layer made by SNAPSHOT (a group ID or an image) back into its point-in-time image.

    The disk keeps its current content at its original path; the point in time is gone. Guests
    must be stopped.
    """
    _snapshot_apply(snapshot_id, "merge", as_json)


@snapshot.command(name="discard")
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snapshot_discard(snapshot_id: str, as_json: bool) -> None:
    """Drop the layer made by SNAPSHOT: the disk returns to the point in time. Guests must be stopped."""
    _snapshot_apply(snapshot_id, "discard", as_json)


@snapshot.command(name="hypervisors")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snapshot_hypervisors(as_json: bool) -> None:
    """The installed hypervisor plugins, whether each works here, and their options."""
    _snapshot_hypervisors(as_json)


def _snapshot_create(
    hypervisor: str,
    guests: list[str],
    all_guests: bool,
    quiesce: str,
    freeze_timeout: float,
    hold_timeout: float,
    hv_opts: list[str],
    as_json: bool,
) -> None:
    from vhdtool.errors import UsageError
    from vhdtool.vss import mixed
    from vhdtool.vss.coordinator import Quiesce, SnapshotError, SnapshotOptions, create_snapshot

    if guests and all_guests:
        raise UsageError("give either --guest NAME… or --all, not both")
    if not guests and not all_guests:
        raise UsageError("name the guests of the group with --guest NAME (repeatable) or use --all")
    plugin, options, names = mixed.plan_group(hypervisor, guests, hv_opts)
    opts = SnapshotOptions(
        guests=None if all_guests else names,
        quiesce=Quiesce(quiesce),
        freeze_timeout=freeze_timeout,
        hold_timeout=hold_timeout,
    )
    with mixed.load_group(plugin, options) as hv:
        try:
            report = create_snapshot(hv, opts)
        except SnapshotError as e:
            if as_json:
                render.print_json(e.report.to_json())
            else:
                _print_snapshot_report(e.report)
            raise
    if as_json:
        render.print_json(report.to_json())
    else:
        _print_snapshot_report(report)


def _print_snapshot_report(report: Report) -> None:
    from vhdtool.vss import mixed

    rows = []
    for g in report.guests:
        state = "quiesced" if g.quiesced else ("paused" if g.mode == "pause" else "—")
        shown = f"{g.hypervisor}{mixed.SEP}{g.name}" if report.hypervisor == mixed.NAME else g.name
        if not g.disks:
            rows.append([shown, state, "", "", "", g.error or g.note or ""])
        for d in g.disks:
            rows.append([shown, state, d.id, d.snapshot, d.active, g.error or g.note or ""])
    if report.ok:
        label = "consistent" if report.consistent else "crash-consistent (not every guest quiesced)"
        title = f"snapshot {report.group}: {label}, freeze window {report.freeze_window_ms} ms"
    else:
        title = f"snapshot {report.group}: NOT taken, every guest thawed ({report.freeze_window_ms} ms)"
    render.table(["guest", "state", "disk", "point-in-time image", "now writes to", "note"], rows, title=title)
    if report.watchdog:
        render.warning(f"watchdog {report.watchdog}")


def _snapshot_list(as_json: bool) -> None:
    import datetime
    import os

    from vhdtool.vss import catalogue

    records = catalogue.records()
    if as_json:
        render.print_json([r.to_json() for r in records])
        return
    rows = []
    for r in records:
        when = datetime.datetime.fromtimestamp(r.report.created).isoformat(timespec="seconds")
        for g in r.report.guests:
            for d in g.disks:
                missing = [p for p in (d.snapshot, d.active) if not os.path.exists(p)]
                rows.append(
                    [
                        r.report.group,
                        when,
                        r.state + (" (files missing)" if missing else ""),
                        "yes" if g.quiesced else "no",
                        g.name,
                        d.snapshot,
                        d.active,
                    ]
                )
    if not rows:
        print(f"no snapshots on record in {catalogue.folder()}", file=sys.stderr)
        return
    render.table(["group", "created", "state", "quiesced", "guest", "point-in-time image", "layer"], rows)


def _snapshot_apply(snapshot: str, action: str, as_json: bool) -> None:
    from vhdtool.vss import manage

    done = manage.apply(snapshot, action)
    if as_json:
        render.print_json([{"snapshot": d.snapshot, "layer": d.active, "action": d.action} for d in done])
        return
    for d in done:
        what = "merged into" if d.action == "merged" else "discarded; disk is back at"
        print(f"{d.active}: {what} {d.snapshot}")


def _snapshot_hypervisors(as_json: bool) -> None:
    from vhdtool.vss import registry

    found = []
    for name in registry.names():
        try:
            cls = registry.plugin_class(name)
            reason = cls.supports()
            options = dict(cls.option_help)
            for_tests = bool(cls.for_tests)
        except Exception as e:  # a broken third-party plugin is listed, not fatal
            reason, options, for_tests = str(e), {}, False
        found.append(
            {"name": name, "usable": reason is None, "reason": reason, "options": options, "test-plugin": for_tests}
        )
    if as_json:
        render.print_json(found)
        return
    render.table(
        ["hypervisor", "usable", "options"],
        [
            [
                f["name"] + (" (test plugin: no real guests)" if f["test-plugin"] else ""),
                "yes" if f["usable"] else f"no: {f['reason']}",
                ", ".join(f["options"]),
            ]
            for f in found
        ],
    )


# -- build and the file commands (ls, cat, cp, rm, mkdir) -----------------------------------------


def _owner_option(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, sep, gid = text.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep):
        raise click.BadParameter(f"{text!r} is not UID:GID (numbers, like 0:0)", param_hint="--owner")
    return int(uid), int(gid)


@cli.command()
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
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@_QUIET
@_JSON
def build(
    out: str,
    from_dir: str,
    size: str,
    fs: str,
    table: str,
    label: str | None,
    fs_uuid: str | None,
    disk_type: str,
    owner: str | None,
    reproducible: bool,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a VHD holding a partition with a filesystem made from a folder (no root, no FUSE)."""
    from vhdtool.ops.build import build as build_image

    with _progress("building", not (quiet or as_json)) as progress:
        built = build_image(
            out,
            from_dir,
            fs=fs,
            table=table,
            size=None if size == "auto" else _size_option(size),
            label=label,
            fs_uuid=fs_uuid,
            disk_type=disk_type,
            owner=_owner_option(owner),
            reproducible=reproducible,
            overwrite=force,
            progress=progress,
        )
    for w in built.warnings:
        render.warning(w)
    if as_json:
        render.print_json(built.as_json())
    else:
        print(
            f"built {out}: {render.human_size(built.size)} {disk_type} VHD, {built.table} table, "
            f"{built.filesystem} with {built.files} files ({render.human_size(built.data_bytes)} of data)"
        )


_PARTITION = click.option("--partition", type=int, help="Partition number (default: the first with a filesystem).")
_UNDO = click.option("--undo", is_flag=True, help="Write into (or read through) the undo disk IMAGE.undo.vhd.")


def _file_warnings(warnings: list[str]) -> None:
    for w in warnings:
        render.warning(w)


@cli.command(name="ls")
@click.argument("target", metavar="IMAGE[:PATH]")
@click.option("-l", "long", is_flag=True, help="Long listing: type, mode, owner, size.")
@_PARTITION
@_UNDO
@_JSON
def ls_command(target: str, long: bool, partition: int | None, undo: bool, as_json: bool) -> None:
    """List a folder (or show a file) inside an image's filesystem."""
    from vhdtool.ops.files import ls

    _, entries = ls(target, partition=partition, undo=undo)
    if as_json:
        render.print_json([{"name": e.name, "type": e.kind, "size": e.size, "mode": e.mode, "uid": e.uid,
                            "gid": e.gid} for e in entries])
        return
    for e in entries:
        name = e.name + ("/" if e.kind == "dir" else "")
        if long:
            mode = f"{e.mode:04o}" if e.mode is not None else "-"
            owner = f"{e.uid}:{e.gid}" if e.uid is not None else "-"
            print(f"{e.kind:<7} {mode:>5} {owner:>11} {e.size:>12} {name}")
        else:
            print(name)


@cli.command(name="cat")
@click.argument("target", metavar="IMAGE:PATH")
@_PARTITION
@_UNDO
def cat_command(target: str, partition: int | None, undo: bool) -> None:
    """Write a file inside an image to standard output."""
    from vhdtool.ops.files import cat

    cat(target, sys.stdout.buffer, partition=partition, undo=undo)


@cli.command(name="cp")
@click.argument("source")
@click.argument("destination")
@_PARTITION
@_UNDO
@_QUIET
def cp_command(source: str, destination: str, partition: int | None, undo: bool, quiet: bool) -> None:
    """Copy a file or folder into an image (DESTINATION is IMAGE:PATH) or out of one (SOURCE is)."""
    from vhdtool.ops.files import cp

    with _progress("copying", not quiet) as progress:
        copied = cp(source, destination, partition=partition, undo=undo, progress=progress)
    _file_warnings(copied.warnings)


@cli.command(name="rm")
@click.argument("target", metavar="IMAGE:PATH")
@click.option("-r", "--recursive", is_flag=True, help="Remove a folder and everything in it.")
@_PARTITION
@_UNDO
def rm_command(target: str, recursive: bool, partition: int | None, undo: bool) -> None:
    """Remove a file or folder inside an image."""
    from vhdtool.ops.files import rm

    rm(target, recursive=recursive, partition=partition, undo=undo)


@cli.command(name="mkdir")
@click.argument("target", metavar="IMAGE:PATH")
@click.option("-p", "--parents", is_flag=True, help="Make missing parent folders too; no error if it exists.")
@_PARTITION
@_UNDO
def mkdir_command(target: str, parents: bool, partition: int | None, undo: bool) -> None:
    """Make a folder inside an image."""
    from vhdtool.ops.files import mkdir

    mkdir(target, parents=parents, partition=partition, undo=undo)


@cli.command(context_settings={"ignore_unknown_options": True})  # so that "-1G" is a SIZE, not an option
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("size")
@click.option("--force", is_flag=True, help="Shrink even if data is stored past the new end (it is lost).")
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Look for children here too.")
@_JSON
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
    print(f"resized {path}: {done.old_size} -> {done.new_size} bytes{moved}")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@_QUIET
@_JSON
def compact(path: str, quiet: bool, as_json: bool) -> None:
    """Drop blocks that read as zeros (or as the parent reads them) and shrink the file.

    Refused when the saved-state flag is set. In place, ordered writes: the content never
    changes at any step, so an interrupted compact (Ctrl-C stops at the next batch) leaves the
    same content, at worst with space not yet reclaimed; run it again to finish.
    """
    from vhdtool.ops.compact import compact as compact_image

    with _progress("scanning blocks", not (quiet or as_json)) as progress:
        done = compact_image(path, progress=progress)
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        print(
            f"compacted {path}: {done.dropped_blocks} block(s) dropped, {done.moved_blocks} moved, "
            f"{render.human_size(done.reclaimed)} ({done.reclaimed} bytes) reclaimed"
        )


@cli.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--into", type=click.Path(dir_okay=False), help="Merge into this ancestor (default: the parent).")
@click.option("--delete-child", is_flag=True, help="Delete CHILD (and the disks between) after merging.")
@click.option("--force", is_flag=True, help="Merge even if other children of the ancestor are beside it.")
@_QUIET
@_JSON
def merge(child: str, into: str | None, delete_child: bool, force: bool, quiet: bool, as_json: bool) -> None:
    """Commit a differencing disk's data into its parent (or a further ancestor).

    Refused when other disks beside the ancestor depend on it, unless --force. In place, ordered
    writes into the ancestor only: CHILD reads the same at every step, so an interrupted merge
    (Ctrl-C stops after the current piece) leaves the chain intact and can be run again.
    """
    from vhdtool.ops.merge import merge as merge_images

    with _progress("merging", not (quiet or as_json)) as progress:
        done = merge_images(child, into, delete_child=delete_child, force=force, progress=progress)
    if as_json:
        render.print_json(done.as_json())
        return
    for path in done.stale:
        render.warning(f"{path} no longer reads as before (its parent changed); delete it")
    if not quiet:
        print(f"merged {', '.join(done.merged)} into {done.into} ({render.human_size(done.data_bytes)} written)")
        for path in done.deleted:
            print(f"deleted {path}")


@cli.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--parent", "-b", "parent", required=True, type=click.Path(dir_okay=False), help="The new parent.")
@click.option("--unsafe", is_flag=True, help="Only rewrite the parent UUID, time stamp, name and locators.")
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Look for children here too.")
@_QUIET
@_JSON
def rebase(child: str, parent: str, unsafe: bool, children: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Give CHILD another parent, keeping what it reads (like qemu-img rebase).

    Safe mode copies into CHILD what the old chain shows and the new parent does not; --unsafe
    only relinks (for a moved or renamed parent), and is refused while CHILD has children of
    its own (beside it or in --children folders). In place, ordered writes: CHILD keeps its
    content and its old parent until one final header write switches it, so an interrupted
    rebase (Ctrl-C stops after the current piece) leaves it on the old parent.
    """
    from vhdtool.ops.rebase import rebase as rebase_image

    with _progress("rebasing", not (quiet or as_json or unsafe)) as progress:
        done = rebase_image(child, parent, unsafe=unsafe, progress=progress, children=list(children))
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        copied = "" if unsafe else f" ({render.human_size(done.copied_bytes)} copied into the child)"
        print(f"rebased {child} onto {parent}{copied}")


@cli.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--parent", type=click.Path(dir_okay=False), help="The parent file (checked by UUID).")
@click.option("--check-content", is_flag=True,
              help="Refuse unless each parent reads as the original the old locators name (a copied chain).")
@_JSON
def relink(child: str, parent: str | None, check_content: bool, as_json: bool) -> None:
    """Repair the parent locators of a moved, renamed or copied chain.

    Each parent is found through PARENT, the locators, or by UUID among the VHDs in the child's
    folder; every disk of the chain gets a relative and an absolute locator, and records its
    parent's current time stamp (a copy's new file times then raise no warning). In place: new
    locator data is written past the end, then one header write switches to it, so an
    interrupted relink leaves each disk with its old or its new locators.
    """
    from vhdtool.ops.relink import relink as relink_chain

    done = relink_chain(child, parent, check_content=check_content)
    if as_json:
        render.print_json(done.as_json())
        return
    for c, p in done.links:
        print(f"{c} -> {p}")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only list what would be done.")
@_JSON
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
            print(f"metadata saved to {done.backup}")
        for action in done.actions:
            print(("would: " if dry_run else "") + action)
        for problem in done.unrepaired:
            render.warning(f"not repaired: {problem}")
        if not done.actions and not done.unrepaired:
            print(f"{path}: nothing to repair")
    sys.exit(done.exit_code)


@cli.command(name="reset-id")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Update the children in this folder.")
@click.option("--uuid", "new_uuid", help="Use this UUID (e.g. to finish an interrupted run).")
@_JSON
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
    print(f"{path}: UUID {done.old_uuid} -> {done.new_uuid}")
    for kid in done.children:
        print(f"updated child {kid}")
    for kid in done.dangling:
        render.warning(f"{kid} refers to the old UUID; run reset-id with --children to update it")


@cli.command(name="run")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kernel", type=click.Path(dir_okay=False), help="Boot this kernel directly (images: /dev/vda, ...).")
@click.option("--initrd", type=click.Path(dir_okay=False), help="Initramfs for --kernel.")
@click.option("--append", help="Kernel command line (default: console=ttyS0 root=/dev/vda rw panic=-1).")
@click.option("--memory", "-m", default="512M", show_default=True, help="Guest memory (512M, 2G; bare number: MiB).")
@click.option("--cpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto: KVM only with real hardware virtualisation, else TCG.")  # fmt: skip
@click.option("--snapshot", is_flag=True, help="Throw the guest's writes away at exit: the images stay as they are.")
@click.option("--expect", metavar="REGEX", help="Exit 0 once the console matches; 1 if the guest stops first.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop the guest after this long and exit 1.")
@click.option("--console", is_flag=True, help="Interactive serial console (Ctrl-] stops); default: output only.")
@click.option("--net", type=click.Choice(["none", "user"]), default="none", show_default=True, help="Guest network.")
@click.option("--qmp", type=click.Path(dir_okay=False), metavar="SOCKET", help="Put the QMP socket at this path.")
@click.option("--agent", is_flag=True, help="Add a virtio-serial channel for the QEMU guest agent.")
@click.option("--name", help="Guest name (default: the first image's file stem, made unique).")
@click.option("--incoming", metavar="unix:PATH|tcp:HOST:PORT",
              help="Wait for `vhdtool migrate` here instead of booting (disks on PATH.nbd or PORT+1).")  # fmt: skip
def run_command(
    images: tuple[str, ...],
    kernel: str | None,
    initrd: str | None,
    append: str | None,
    memory: str,
    cpus: int,
    accel: str,
    snapshot: bool,
    expect: str | None,
    timeout: float | None,
    console: bool,
    net: str,
    qmp: str | None,
    agent: bool,
    name: str | None,
    incoming: str | None,
) -> None:
    """Boot IMAGES under QEMU (q35, virtio disks served by vhdtool's NBD server), until the guest stops.

    Without --kernel the first image boots through its own bootloader (BIOS); with it, the
    kernel boots directly with the images as /dev/vda, /dev/vdb, ... (under TCG tsc_early_khz=
    is added to the command line). The serial console is streamed to standard output. Ctrl-C
    or SIGTERM stops the guest at once, as a power cut would (what it had not synced is lost),
    and flushes everything it wrote into the images. Running guests are listed by `vhdtool ps`.

    With --incoming the guest does not boot: it waits for `vhdtool migrate NAME --to ADDRESS`
    (same boot options and devices as the source; IMAGES of the source's sizes, new ones will
    do) and serves IMAGES for the copy of the source's disks at PATH.nbd (unix:PATH) or on
    PORT+1 (tcp:HOST:PORT) until the guest runs here.

    Exit codes: 0 the guest stopped by itself, migrated away or --expect matched; 1 no match
    before the guest stopped or --timeout passed, QEMU failed, or the incoming migration failed;
    64 bad input; 130/143 stopped by SIGINT/SIGTERM.
    """
    from vhdtool.run.runner import RunOptions, run

    options = RunOptions(
        images=list(images),
        kernel=kernel,
        initrd=initrd,
        append=append,
        memory=memory,
        cpus=cpus,
        accel=accel,
        snapshot=snapshot,
        expect=expect,
        timeout=timeout,
        console=console,
        net=net,
        qmp=qmp,
        agent=agent,
        name=name,
        incoming=incoming,
    )
    sys.exit(run(options))


@cli.command(name="migrate")
@click.argument("name")
@click.option("--to", "to", required=True, metavar="unix:PATH|tcp:HOST:PORT",
              help="The destination: a `vhdtool run --incoming` waiting there.")  # fmt: skip
@click.option("--bandwidth", metavar="RATE", help="Cap the copy at RATE bytes per second (100M, 1G; default: none).")
@_QUIET
@_JSON
def migrate_command(name: str, to: str, bandwidth: str | None, quiet: bool, as_json: bool) -> None:
    """Move the running guest NAME to a destination runner, its disks with it, while it runs.

    Every disk is copied into the destination's images while the guest runs (QEMU's
    blockdev-mirror; once in sync every write reaches both), then RAM and device state follow
    (QEMU's migration); at the switch-over the guest stops here, the last writes reach the
    destination, and it starts there. The source runner then exits, its images closed.

    On any failure, Ctrl-C or SIGTERM before the switch-over the migration is cancelled: NAME
    keeps running here, the destination runner is stopped (exit 1) and its images are left as the
    copy reached them, partly filled: use them again for the next try, or delete them.
    Exit codes: 0 moved; 1 failed, NAME still runs here; 64 bad input; 130/143 interrupted.
    """
    from vhdtool.run.migrate import migrate

    with contextlib.ExitStack() as stack:
        bars: dict[str, Callable[[int, int], None]] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                stack.close()
                bars.clear()
                bars[phase] = stack.enter_context(_progress(f"copying {phase}", not (quiet or as_json)))
            bars[phase](done, total)

        result = migrate(
            name,
            to,
            bandwidth=_size_option(bandwidth),
            progress=progress,
            say=lambda line: print(f"vhdtool: migrate: {line}", file=sys.stderr, flush=True),
        )
    if as_json:
        render.print_json(result.as_json())
        return
    disks = ", ".join(f"{d.id} {render.human_size(d.bytes)}" for d in result.disks)
    print(
        f"{result.name}: moved to {result.to} in {result.total_ms / 1000:.2f} s, downtime {result.downtime_ms} ms; "
        f"sent {render.human_size(result.transferred_bytes)} (RAM {render.human_size(result.ram_bytes)}, {disks})"
    )


@cli.command(name="ps")
@_JSON
def ps_command(as_json: bool) -> None:
    """List the guests `vhdtool run` is running: name, pid, accelerator, uptime, sockets, disks."""
    from vhdtool.run.listing import running_guests

    guests = running_guests()
    if as_json:
        render.print_json(guests)
        return
    if not guests:
        from vhdtool.run.state import state_dir

        print(f"no running guests in {state_dir()}", file=sys.stderr)
        return
    render.table(
        ["name", "pid", "accel", "up", "disks", "QMP", "agent"],
        [
            [
                g["name"],
                str(g["pid"]),
                g["accel"],
                f"{g['uptime']:.0f}s",
                "\n".join(f"{d['id']}: {d['active']}" for d in g["disks"]),
                g["qmp"],
                g["agent"] or "-",
            ]
            for g in guests
        ],
    )


# -- mount and umount (issue 4): VHD Mount over FUSE with an undo disk ---------------------------------


@cli.command(name="mount")
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
@_JSON
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
            print("nothing is mounted by vhdtool")
            return
        rows = [
            [r.mountpoint, r.image, "raw view" if r.raw else f"p{r.partition} {r.fs} ({r.driver})",
             r.undo if r.mode == "undo" else r.mode, registry.status(r)]
            for r in found
        ]
        render.table(["Mountpoint", "Image", "What", "Writes to", "State"], rows)
        return
    if image is None or mountpoint is None:
        raise click.UsageError("IMAGE and MOUNTPOINT are required (or --list)")
    spec = prepare(image, mountpoint, raw=raw, partition=partition, driver=driver, read_only=read_only,
                   undo=not no_undo, undo_dir=undo_dir)

    def mounted(record: Any) -> None:
        if as_json:
            render.print_json(record.as_json())
        else:
            print(control.describe(record), flush=True)

    if foreground:
        reason = control.serve_foreground(spec, mounted)
        if registry.load(spec.mountpoint) is not None:
            render.warning(f"stopped ({reason}); the undo disk waits: "
                           f"'vhdtool umount --commit|--discard {spec.mountpoint}'")
        elif not as_json:
            print(f"stopped ({reason})")
        return
    record, _ = control.spawn(spec)
    mounted(record)


@cli.command(name="umount")
@click.argument("mountpoint", type=click.Path())
@click.option("--commit", "action", flag_value="commit", help="Merge the undo disk into the image.")
@click.option("--discard", "action", flag_value="discard", help="Delete the undo disk: the image stays as it was.")
@_QUIET
@_JSON
def umount_command(mountpoint: str, action: str | None, quiet: bool, as_json: bool) -> None:
    """Unmount a vhdtool mount (a stale one too) and commit or discard its undo disk.

    Without --commit or --discard, asks on a terminal; elsewhere refuses and changes nothing.
    """
    from vhdtool.mount import control

    def ask(record: Any) -> str | None:
        if as_json or not sys.stdin.isatty():
            return None
        choice = click.prompt(f"Changes to {record.image} are in its undo disk: commit, discard or cancel?",
                              type=click.Choice(["commit", "discard", "cancel"]), default="cancel")
        return None if choice == "cancel" else choice

    with _progress("committing", not (quiet or as_json)) as progress:
        done = control.unmount(mountpoint, action, ask=ask, progress=progress)
    if done.was_stale:
        render.warning(f"{done.record.mountpoint}: its mount server had died; cleaned up the stale mount")
    if as_json:
        render.print_json({"mountpoint": done.record.mountpoint, "image": done.record.image, "action": done.action,
                           "committed-bytes": done.committed, "was-stale": done.was_stale,
                           "already": done.earlier})
    elif not quiet:
        outcome = {
            "commit": f"; committed {render.human_size(done.committed)} into {done.record.image}",
            "discard": f"; discarded the undo disk, {done.record.image} is unchanged",
        }.get(done.action or "", "")
        print(f"{'already ' if done.earlier else ''}unmounted {done.record.mountpoint}{outcome}")


_EXIT_CODES = "Exit status: 0 done; 1 error{}; 64 bad options or arguments."
_REFUSALS = {
    "merge": " or refused for safety (other disks depend on the parent; --force overrides)",
    "resize": " or refused for safety (a shrink over stored data; --force overrides)",
    "compact": " or refused for safety (the saved-state flag is set)",
    "rebase": " or refused (a loop, a missing or mismatched parent)",
    "relink": " or refused (a parent not found, or with --check-content one that reads differently)",
}


def _document_exit_codes(group: click.Group) -> None:
    """Every command's --help ends with its exit codes (those that differ say so in their text)."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            _document_exit_codes(command)
        elif command.help and "Exit status" not in command.help and "Exit codes" not in command.help:
            command.epilog = _EXIT_CODES.format(_REFUSALS.get(name, ""))


_document_exit_codes(cli)


def main() -> None:
    """Console entry point: VhdError becomes one line and an exit code, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        render.error("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        render.error(e.format_message())
        sys.exit(64 if isinstance(e, click.UsageError) else e.exit_code)
    except VhdError as e:
        render.error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        render.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:
        render.error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
