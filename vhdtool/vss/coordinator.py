"""The snapshot protocol for one consistency group, VSS-like:

discover -> prepare (new layers, space check) -> freeze all (in parallel, one deadline) ->
switch every disk's write layer -> thaw all -> report.

Guests with a guest agent are frozen (application-consistent); guests without one, or all of
them under ``--quiesce off``, are paused instead (crash-consistent). Nothing is frozen before the
group is known to be possible: unknown guests, a missing agent under ``required``, a disk that
cannot be layered or a full filesystem stop the snapshot while every guest still runs untouched.

Any failure after the first freeze — a freeze that fails or misses its deadline, a switch that
fails, Ctrl-C — rolls the whole group back: disks already switched go back to their old top
while the guests are still frozen, every guest is thawed or resumed, the new layers are removed.
A watchdog process covers the coordinator's own death (see ``watchdog``).
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.vss import catalogue
from vhdtool.vss.layers import check_space, new_group_id, remove_layer, settle_parent_time
from vhdtool.vss.parallel import Batch, run_all
from vhdtool.vss.plugin import Disk, Hypervisor, HypervisorError, OperationTimeout
from vhdtool.vss.report import DiskResult, GuestResult, Report
from vhdtool.vss.rollback import NewLayer, roll_back
from vhdtool.vss.watchdog import WatchdogHandle

WATCHDOG_GRACE = 30.0
"""Seconds past freeze + hold + thaw timeouts after which the watchdog stops trusting a silent
coordinator."""


SWITCH_GRACE = 2.0
"""Seconds a roll-back waits for layer switches in flight before switching back the finished ones."""


class Quiesce(enum.Enum):
    REQUIRED = "required"
    PREFERRED = "preferred"
    OFF = "off"


@dataclass(slots=True)
class SnapshotOptions:
    guests: list[str] | None = None
    """Guest names; None = every guest of the hypervisor."""
    quiesce: Quiesce = Quiesce.PREFERRED
    freeze_timeout: float = 60.0
    """Deadline for the whole freeze phase (all guests in parallel)."""
    hold_timeout: float = 10.0
    """Deadline for the switch phase: how long guests may stay frozen after the last freeze."""
    probe_timeout: float = 5.0
    thaw_timeout: float = 30.0
    watchdog: bool = True


class SnapshotError(VhdError):
    """The snapshot was not taken (or not completely thawed); ``report`` says what happened."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass(slots=True)
class _Member:
    """One guest of the group and what the coordinator did to it."""

    name: str
    disks: list[Disk]
    layers: dict[str, str]
    mode: str
    result: GuestResult
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Orders a late fallback pause (in a thread past its deadline) against the roll-back."""


class _Group:
    def __init__(self, hv: Hypervisor, opts: SnapshotOptions, catalogue_dir: str | None) -> None:
        self.hv = hv
        self.opts = opts
        self.catalogue_dir = catalogue_dir or catalogue.folder()
        self.report = Report(group=new_group_id(), hypervisor=hv.name, created=time.time())
        self.members: dict[str, _Member] = {}
        self.switched: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.watchdog: WatchdogHandle | None = None
        self.first_freeze = 0.0
        self.aborting = threading.Event()

    # --- before any guest is touched ---------------------------------------------------------

    def discover(self) -> None:
        known = [g.name for g in self.hv.list_guests()]
        names = known if self.opts.guests is None else list(dict.fromkeys(self.opts.guests))
        missing = [n for n in names if n not in known]
        if missing:
            raise UsageError(
                f"no guest named {missing[0]!r} on hypervisor {self.hv.name} (running: {', '.join(known) or 'none'})"
            )
        if not names:
            raise UsageError(f"hypervisor {self.hv.name} runs no guest to snapshot")
        listed = run_all(names, self.hv.list_disks, self.opts.probe_timeout * 4)
        self._fail_before_freeze(listed, "cannot list the disks of")
        for name in names:
            disks = listed.outcomes[name].value or []
            for d in disks:
                if not d.layerable:
                    raise HypervisorError(f"{name}: disk {d.id} ({d.path}) cannot take a snapshot layer")
            layers = {d.id: self.hv.layer_path(name, d, self.report.group) for d in disks}
            self.members[name] = _Member(name, disks, layers, "pause", self._result(name, "none"))
        self.report.guests = [m.result for m in self.members.values()]

    def choose_modes(self) -> None:
        if self.opts.quiesce is Quiesce.OFF:
            for m in self.members.values():
                m.mode = "pause"
            return
        timeout = self.opts.probe_timeout
        probes = run_all(list(self.members), lambda n: self.hv.probe_agent(n, timeout), timeout + 1)
        without = []
        for name, m in self.members.items():
            outcome = probes.outcomes[name]
            has_agent = outcome.ok and bool(outcome.value)
            m.mode = "freeze" if has_agent else "pause"
            if not has_agent:
                why = outcome.error or ("no answer" if not outcome.done else "no guest agent")
                m.result.note = f"guest agent: {why}"
                without.append(name)
        if without and self.opts.quiesce is Quiesce.REQUIRED:
            first = self.members[without[0]].result.note
            raise SnapshotError(
                f"{', '.join(without)}: cannot be quiesced ({first}) and --quiesce is required; no guest was touched",
                self.report,
            )

    def prepare(self) -> None:
        keys = [(m.name, d.id) for m in self.members.values() for d in m.disks]
        costs = run_all(keys, lambda k: self.hv.layer_cost(k[0], self._disk(*k)), 120)
        self._fail_before_freeze(costs, "cannot open the disk image of")
        check_space((self._layer(*k), costs.outcomes[k].value or 0) for k in keys)
        made = run_all(keys, lambda k: self.hv.new_layer(k[0], self._disk(*k), self._layer(*k)), 300)
        if made.failures() or made.unfinished():
            for k in keys:
                if made.outcomes[k].ok:
                    remove_layer(self._layer(*k))
            self._fail_before_freeze(made, "cannot create a new layer for")
        self._record(self._planned_report(), catalogue.PREPARED)

    def _planned_report(self) -> Report:
        planned = Report(self.report.group, self.report.hypervisor, self.report.created)
        for m in self.members.values():
            planned.guests.append(
                self._result(m.name, m.mode, [DiskResult(d.id, d.path, m.layers[d.id]) for d in m.disks])
            )
        return planned

    def _result(self, name: str, mode: str, disks: list[DiskResult] | None = None) -> GuestResult:
        plugin, shown = self.hv.describe(name)
        return GuestResult(shown, mode, disks=disks or [], hypervisor=plugin)

    def _fail_before_freeze(self, batch: Batch[Any, Any], what: str) -> None:
        for key, error in batch.failures().items():
            name = "/".join(key) if isinstance(key, tuple) else key
            raise HypervisorError(f"{what} {name}: {error}")
        for key in batch.unfinished():
            name = "/".join(key) if isinstance(key, tuple) else key
            raise HypervisorError(f"{what} {name}: no answer")

    def arm_watchdog(self) -> None:
        options = self.hv.rescue_options()
        if options is None or not self.opts.watchdog:
            return
        plan = {
            "hypervisor": self.hv.name,
            "options": options,
            "coordinator": os.getpid(),
            "deadline": self.opts.freeze_timeout + self.opts.hold_timeout + self.opts.thaw_timeout + WATCHDOG_GRACE,
            "catalogue": self.catalogue_dir,
            "group": self.report.group,
            "guests": [
                {
                    "name": m.name,
                    "mode": m.mode,
                    "disks": [{"id": d.id, "path": d.path, "layer": m.layers[d.id]} for d in m.disks],
                }
                for m in self.members.values()
            ],
        }
        self.watchdog = WatchdogHandle.start(plan)

    # --- the window --------------------------------------------------------------------------

    def _quiesce_one(self, name: str) -> None:
        m = self.members[name]
        left = max(0.0, self.first_freeze + self.opts.freeze_timeout - time.monotonic())
        if m.mode == "freeze":
            try:
                m.result.frozen_filesystems = self.hv.freeze(name, left)
                m.result.mode, m.result.quiesced = "freeze", True
                return
            except HypervisorError as e:
                if self.opts.quiesce is not Quiesce.PREFERRED:
                    raise
                # preferred: fall back to a crash-consistent pause of this guest (thawing first,
                # in case the agent froze some filesystems before failing) — unless the group is
                # already being rolled back, which must not find a guest paused behind its back
                with m.lock:
                    if self.aborting.is_set():
                        raise
                    m.result.note = f"freeze failed, paused instead: {e}"
                    m.mode = "pause"
                    self.hv.thaw(name, left)
                    self.hv.pause(name, left)
                    m.result.mode = "pause"
                return
        self.hv.pause(name, left)
        m.result.mode = "pause"

    def _switch_one(self, name: str, deadline: float) -> None:
        m = self.members[name]
        for d in m.disks:
            self.hv.switch_disk(name, d, m.layers[d.id], max(0.0, deadline - time.monotonic()))
            with self._lock:
                self.switched.add((name, d.id))

    def _release_one(self, name: str) -> None:
        m = self.members[name]
        with m.lock:
            self._release_locked(m)

    def _release_locked(self, m: _Member) -> None:
        name = m.name
        if m.mode == "freeze":
            self.hv.thaw(name, self.opts.thaw_timeout)
        else:
            self.hv.resume(name, self.opts.thaw_timeout)

    def window(self) -> None:
        self.first_freeze = time.monotonic()
        frozen = Batch(list(self.members), self._quiesce_one).start()
        try:
            frozen.wait(self.first_freeze + self.opts.freeze_timeout, stop_on_error=True)
            # each member's calls are given what is left of the same deadline, so a member whose
            # call timed out is late like one still running, whichever the threads noticed first
            timed_out = [n for n, e in frozen.failures().items() if isinstance(e, OperationTimeout)]
            failed = {n: e for n, e in frozen.failures().items() if n not in timed_out}
            if failed:
                name, error = next(iter(failed.items()))
                raise _Abort(f"{name}: {_what(self.members[name])} failed: {error}", frozen)
            late = timed_out + frozen.unfinished()
            if late:
                raise _Abort(
                    f"{', '.join(late[:5])}{'…' if len(late) > 5 else ''}: "
                    f"no freeze within --freeze-timeout {self.opts.freeze_timeout:g}s",
                    frozen,
                )
            deadline = time.monotonic() + self.opts.hold_timeout
            switching = Batch(list(self.members), lambda n: self._switch_one(n, deadline)).start()
            if not switching.wait(deadline, stop_on_error=True) or switching.failures():
                if switching.failures():
                    name, error = next(iter(switching.failures().items()))
                    raise _Abort(f"{name}: switching the write layer failed: {error}", frozen, switching)
                raise _Abort(
                    f"{', '.join(switching.unfinished())}: layer switch not done within "
                    f"--hold-timeout {self.opts.hold_timeout:g}s",
                    frozen,
                    switching,
                )
        except _Abort as abort:
            self._roll_back(abort)
            raise SnapshotError(str(abort), self.report) from None
        except BaseException:
            self._roll_back(_Abort("interrupted", frozen))
            raise
        if self.watchdog:
            self.watchdog.committed()
        for m in self.members.values():
            m.result.disks = [DiskResult(d.id, d.path, m.layers[d.id]) for d in m.disks]
        thawed = run_all(list(self.members), self._release_one, self.opts.thaw_timeout)
        self.report.freeze_window_ms = round((thawed.last_finish() - self.first_freeze) * 1000)
        stuck = {**{n: str(e) for n, e in thawed.failures().items()}, **dict.fromkeys(thawed.unfinished(), "no answer")}
        for m in self.members.values():
            for layer in m.layers.values():
                settle_parent_time(layer)
        self._record(self.report, catalogue.COMPLETE)
        if stuck:
            self._hand_over(stuck)
            raise SnapshotError(
                f"snapshot taken, but {', '.join(stuck)} could not be thawed ({next(iter(stuck.values()))})"
                + (f"; watchdog {self.watchdog.pid} keeps trying" if self.watchdog else ""),
                self.report,
            )
        if self.watchdog:
            self.watchdog.release()

    def _hand_over(self, stuck: dict[str, str]) -> None:
        for name, why in stuck.items():
            self.members[name].result.error = f"not thawed: {why}"
        if self.watchdog:
            self.report.watchdog = f"pid {self.watchdog.pid} keeps thawing {', '.join(stuck)}"
            self.watchdog.hand_over()

    def _roll_back(self, abort: _Abort) -> None:
        """Undo the group (``rollback.roll_back``): switch back, thaw or resume everyone, remove
        the new layers."""
        self.aborting.set()
        self.report.error = str(abort)
        switching = abort.switching
        if switching is not None:  # a switch about to finish is cheaper to undo than to doubt
            switching.wait(time.monotonic() + SWITCH_GRACE)
        with self._lock:
            back = set(self.switched)

        def in_doubt() -> set[tuple[str, str]]:
            if switching is None:
                return set()
            # a switch still running was not undone: once it ends (a thaw may have cut it off)
            # its disk either stayed on the old top or now writes to the new layer, which must
            # then be kept
            switching.wait(time.monotonic() + self.opts.thaw_timeout)
            with self._lock:
                late = self.switched - back
            return late | {(n, d.id) for n in switching.unfinished() for d in self.members[n].disks}

        # thaw every guest a freeze or pause was issued for, finished or not: thaw is idempotent
        done = roll_back(
            [NewLayer(m.name, d, m.layers[d.id]) for m in self.members.values() for d in m.disks],
            list(self.members),
            writes_to_new=lambda nl: nl.key in back,
            switch_back=lambda nl: self.hv.switch_disk(nl.guest, nl.disk, nl.disk.path, self.opts.thaw_timeout),
            release=self._release_one,
            timeout=self.opts.thaw_timeout,
            in_doubt=in_doubt,
        )
        self.report.freeze_window_ms = round((done.released_at - self.first_freeze) * 1000)
        for m in self.members.values():
            quiesce_error = abort.freezing.failures().get(m.name)
            if quiesce_error is not None:
                m.result.error = f"{_what(m)}: {quiesce_error}"
            elif m.name in abort.freezing.unfinished():
                m.result.error = f"{_what(m)}: no answer before the deadline"
            m.result.quiesced = False
            m.result.disks = []
            for d in m.disks:
                if (m.name, d.id) in done.kept:
                    m.result.error = f"disk {d.id} may still write to {m.layers[d.id]}; kept"
        if done.stuck or done.kept:
            self._hand_over(done.stuck or {n: "disk still on its new layer" for n, _ in done.kept})
            return
        catalogue.remove(self.report.group, self.catalogue_dir)
        if self.watchdog:
            self.watchdog.release()

    def _record(self, report: Report, state: str) -> None:
        if self.hv.keeps_layers():
            catalogue.save(report, state, self.catalogue_dir)

    def _disk(self, guest: str, disk_id: str) -> Disk:
        return next(d for d in self.members[guest].disks if d.id == disk_id)

    def _layer(self, guest: str, disk_id: str) -> str:
        return self.members[guest].layers[disk_id]


class _Abort(Exception):
    def __init__(self, message: str, freezing: Batch[str, Any], switching: Batch[str, Any] | None = None) -> None:
        super().__init__(message)
        self.freezing = freezing
        self.switching = switching


def _what(m: _Member) -> str:
    return "freeze" if m.mode == "freeze" else "pause"


def create_snapshot(hv: Hypervisor, opts: SnapshotOptions, catalogue_dir: str | None = None) -> Report:
    """Take one consistent snapshot of a group of guests; raises SnapshotError (with the report)
    when it could not, after putting every guest back as it was."""
    group = _Group(hv, opts, catalogue_dir)
    group.discover()
    group.choose_modes()
    group.prepare()
    try:
        group.arm_watchdog()
    except BaseException:
        for m in group.members.values():
            for layer in m.layers.values():
                remove_layer(layer)
        catalogue.remove(group.report.group, group.catalogue_dir)
        raise
    group.window()
    return group.report
