"""The ``vhdtool snapshot`` commands' bodies: build the request, call the coordinator or the
catalogue, and render the outcome through ``vhdtool.render`` (tables or one JSON document)."""

from __future__ import annotations

import datetime
import os
import sys

from vhdtool import render
from vhdtool.errors import UsageError
from vhdtool.vss import catalogue, manage, registry
from vhdtool.vss.coordinator import Quiesce, SnapshotError, SnapshotOptions, create_snapshot
from vhdtool.vss.report import Report


def cli_create(
    hypervisor: str,
    guests: list[str],
    all_guests: bool,
    quiesce: str,
    freeze_timeout: float,
    hold_timeout: float,
    hv_opts: list[str],
    as_json: bool,
) -> None:
    if guests and all_guests:
        raise UsageError("give either --guest NAME… or --all, not both")
    if not guests and not all_guests:
        raise UsageError("name the guests of the group with --guest NAME (repeatable) or use --all")
    opts = SnapshotOptions(
        guests=None if all_guests else guests,
        quiesce=Quiesce(quiesce),
        freeze_timeout=freeze_timeout,
        hold_timeout=hold_timeout,
    )
    with registry.load(hypervisor, registry.parse_options(hv_opts)) as hv:
        try:
            report = create_snapshot(hv, opts)
        except SnapshotError as e:
            if as_json:
                render.print_json(e.report.to_json())
            else:
                _print_report(e.report)
            raise
    if as_json:
        render.print_json(report.to_json())
    else:
        _print_report(report)


def _print_report(report: Report) -> None:
    rows = []
    for g in report.guests:
        state = "quiesced" if g.quiesced else ("paused" if g.mode == "pause" else "—")
        if not g.disks:
            rows.append([g.name, state, "", "", "", g.error or g.note or ""])
        for d in g.disks:
            rows.append([g.name, state, d.id, d.snapshot, d.active, g.error or g.note or ""])
    if report.ok:
        label = "consistent" if report.consistent else "crash-consistent (not every guest quiesced)"
        title = f"snapshot {report.group}: {label}, freeze window {report.freeze_window_ms} ms"
    else:
        title = f"snapshot {report.group}: NOT taken, every guest thawed ({report.freeze_window_ms} ms)"
    render.table(["guest", "state", "disk", "point-in-time image", "now writes to", "note"], rows, title=title)
    if report.watchdog:
        render.warning(f"watchdog {report.watchdog}")


def cli_list(as_json: bool) -> None:
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


def cli_apply(snapshot: str, action: str, as_json: bool) -> None:
    done = manage.apply(snapshot, action)
    if as_json:
        render.print_json([{"snapshot": d.snapshot, "layer": d.active, "action": d.action} for d in done])
        return
    for d in done:
        what = "merged into" if d.action == "merged" else "discarded; disk is back at"
        print(f"{d.active}: {what} {d.snapshot}")


def cli_hypervisors(as_json: bool) -> None:
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
