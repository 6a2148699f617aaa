"""Consistent snapshots of running guests: the snapshot group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from vhdtool import render

if TYPE_CHECKING:
    from vhdtool.vss.report import Report


def _deadline(name: str, default: float, text: str) -> Callable[[Any], Any]:
    return click.option(name, type=click.FloatRange(min=0.01), default=default, show_default=True, help=text)


def _repeatable(name: str, dest: str, metavar: str, text: str) -> Callable[[Any], Any]:
    return click.option(name, dest, multiple=True, metavar=metavar, help=text)


@click.group()
def snapshot() -> None:
    """Consistent snapshots of running guests (freeze, switch write layers, thaw), via hypervisor plugins."""


@snapshot.command(name="create")
@click.option("--hypervisor", default="runner", show_default=True, help="Plugin (see 'snapshot hypervisors').")
@_repeatable(
    "--guest",
    "guests",
    "[PLUGIN:]NAME",
    "A guest of the group (repeatable); PLUGIN: puts a guest of another plugin in the same group.",
)
@click.option("--all", "all_guests", is_flag=True, help="Every guest the hypervisor runs.")
@click.option(
    "--quiesce",
    type=click.Choice(["required", "preferred", "off"]),
    default="preferred",
    show_default=True,
    help="required: fail unless every guest's agent freezes; preferred: pause guests without one; "
    "off: pause all (crash-consistent).",
)
@_deadline("--freeze-timeout", 60.0, "Seconds for the whole group to freeze.")
@_deadline("--hold-timeout", 10.0, "Seconds the guests may stay frozen while their disks switch layers.")
@_repeatable(
    "--hypervisor-opt",
    "hv_opts",
    "[PLUGIN:]KEY=VALUE",
    "Plugin option (repeatable); PLUGIN: gives it to that plugin of a mixed group.",
)
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
        render.note(f"no snapshots on record in {catalogue.folder()}")
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
        render.line(f"{d.active}: {what} {d.snapshot}")


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
