"""The ``vhdtool snapshot`` commands' bodies: build the request, call the coordinator or the
catalogue, and render the outcome through ``vhdtool.render`` (tables or one JSON document)."""

from __future__ import annotations

import datetime
import json
import os
import sys

from vhdtool import render
from vhdtool.errors import UsageError
from vhdtool.vss import catalogue, manage, mixed, registry
from vhdtool.vss.coordinator import Quiesce, SnapshotError, SnapshotOptions, create_snapshot
from vhdtool.vss.mixed import MixedHypervisor
from vhdtool.vss.report import GuestResult, Report


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
    plugin, options, names = _group_plugins(hypervisor, guests, hv_opts)
    opts = SnapshotOptions(
        guests=None if all_guests else names,
        quiesce=Quiesce(quiesce),
        freeze_timeout=freeze_timeout,
        hold_timeout=hold_timeout,
    )
    hv = MixedHypervisor(options) if plugin == mixed.NAME else registry.load(plugin, options)
    with hv:
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


def _group_plugins(default: str, guests: list[str], hv_opts: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Which plugin runs the group, its options and the guest names it knows them by.

    ``--guest PLUGIN:NAME`` names a guest of another plugin than ``--hypervisor`` and
    ``--hypervisor-opt PLUGIN:KEY=VALUE`` an option of that plugin; guests of several plugins make
    a mixed group (``vhdtool.vss.mixed``), whose guests keep the ``PLUGIN:NAME`` form.
    """
    plugins = registry.names()
    split = [mixed.split_guest(g, plugins, default) for g in guests]
    pairs: dict[str, list[str]] = {}
    for pair in hv_opts:
        key, sep, value = pair.partition("=")
        owner, name = mixed.split_guest(key, plugins, default) if sep else (default, pair)
        pairs.setdefault(owner, []).append(f"{name}={value}" if sep else pair)
    used = list(dict.fromkeys(p for p, _ in split)) or [default]
    for owner in pairs:
        if owner not in used:
            raise UsageError(f"--hypervisor-opt for {owner}, but no guest of the group runs on {owner}")
    if len(used) == 1:
        return used[0], registry.parse_options(pairs.get(used[0], [])), [n for _, n in split]
    options = {p: json.dumps(registry.parse_options(pairs.get(p, []))) for p in used}
    return mixed.NAME, options, [f"{p}{mixed.SEP}{n}" for p, n in split]


def _print_report(report: Report) -> None:
    rows = []
    for g in report.guests:
        state = "quiesced" if g.quiesced else ("paused" if g.mode == "pause" else "—")
        if not g.disks:
            rows.append([_shown(report, g), state, "", "", "", g.error or g.note or ""])
        for d in g.disks:
            rows.append([_shown(report, g), state, d.id, d.snapshot, d.active, g.error or g.note or ""])
    if report.ok:
        label = "consistent" if report.consistent else "crash-consistent (not every guest quiesced)"
        title = f"snapshot {report.group}: {label}, freeze window {report.freeze_window_ms} ms"
    else:
        title = f"snapshot {report.group}: NOT taken, every guest thawed ({report.freeze_window_ms} ms)"
    render.table(["guest", "state", "disk", "point-in-time image", "now writes to", "note"], rows, title=title)
    if report.watchdog:
        render.warning(f"watchdog {report.watchdog}")


def _shown(report: Report, g: GuestResult) -> str:
    return f"{g.hypervisor}{mixed.SEP}{g.name}" if report.hypervisor == mixed.NAME else g.name


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
