"""The ``simulated`` hypervisor: N guests with a configurable agent latency and injected faults,
for scale and fault tests of the coordinator. Their disks are real small VHDs, so the layers a
snapshot makes are real differencing images.

Options (``--hypervisor-opt KEY=VALUE``):

- ``guests=N`` (default 4, at most 512), named ``sim-0`` … ``sim-{N-1}``;
- ``freeze_ms``, ``thaw_ms``, ``switch_ms``, ``pause_ms`` — latency of each operation;
- ``fail=I:PHASE[,I:PHASE…]`` — guest I fails PHASE (``agent``: it has no agent; ``freeze``,
  ``switch``, ``thaw``, ``pause``, ``resume``);
- ``hang=I:PHASE[,…]`` — guest I never finishes PHASE (until it is thawed or resumed, as a
  stuck agent would be cut off);
- ``dir=PATH`` — keep the disks and the guests' state in PATH. Without it they live in a
  temporary folder removed at exit, in memory; with it a second process (the watchdog, a test)
  sees the same guests, so a coordinator killed mid-window can be rescued.

Like a real guest agent, one guest runs one command at a time: a thaw sent while a slow freeze
is still running waits for it and then thaws.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import ClassVar

from vhdtool.errors import UsageError
from vhdtool.vss.plugin import (
    AgentUnavailable,
    Disk,
    FreezeState,
    Guest,
    GuestStatus,
    Hypervisor,
    HypervisorError,
    OperationTimeout,
    RunState,
)

MAX_GUESTS = 512
DISK_SIZE = 8 << 20
PHASES = ("agent", "freeze", "switch", "thaw", "pause", "resume")
HANG_SECONDS = 3600.0


def _parse_faults(text: str, guests: int, key: str) -> set[tuple[int, str]]:
    faults = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        index, sep, phase = item.partition(":")
        if not sep or not index.isdigit() or phase not in PHASES:
            raise UsageError(f"simulated: {key}={item!r} is not GUEST_INDEX:PHASE (PHASE one of {', '.join(PHASES)})")
        if int(index) >= guests:
            raise UsageError(f"simulated: {key}={item!r} names guest {index} of only {guests}")
        faults.add((int(index), phase))
    return faults


def _number(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"simulated: {key}={text!r} is not a whole number") from None
    if value < 0:
        raise UsageError(f"simulated: {key} cannot be negative")
    return value


class _SimGuest:
    def __init__(self, index: int, disk: str) -> None:
        self.index = index
        self.name = f"sim-{index}"
        self.run = RunState.RUNNING
        self.freeze = FreezeState.THAWED
        self.active = {"disk0": disk}
        self.lock = threading.Lock()
        """Held for the whole of each command, like a guest agent serving one at a time."""
        self.cancel = threading.Event()

    def to_json(self) -> dict[str, object]:
        return {"run": self.run.value, "freeze": self.freeze.value, "active": self.active}

    def load(self, doc: dict[str, object]) -> None:
        self.run = RunState(doc["run"])
        self.freeze = FreezeState(doc["freeze"])
        self.active = dict(doc["active"])  # type: ignore[arg-type]


class SimulatedHypervisor(Hypervisor):
    name = "simulated"
    for_tests = True
    option_help: ClassVar[Mapping[str, str]] = {
        "guests": f"number of guests (default 4, at most {MAX_GUESTS})",
        "freeze_ms": "agent freeze latency in milliseconds",
        "thaw_ms": "agent thaw latency in milliseconds",
        "switch_ms": "layer switch latency in milliseconds",
        "pause_ms": "pause/resume latency in milliseconds",
        "fail": "I:PHASE[,I:PHASE…]: guest I fails PHASE (agent, freeze, switch, thaw, pause, resume)",
        "hang": "I:PHASE[,…]: guest I never finishes PHASE",
        "dir": "keep disks and guest state in this folder (shared with other processes)",
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        count = _number(self.options, "guests", 4)
        if not 1 <= count <= MAX_GUESTS:
            raise UsageError(f"simulated: guests={count}: between 1 and {MAX_GUESTS}")
        self.latency = {p: _number(self.options, f"{p}_ms", 0) / 1000 for p in ("freeze", "thaw", "switch", "pause")}
        self.fail = _parse_faults(self.options.get("fail", ""), count, "fail")
        self.hang = _parse_faults(self.options.get("hang", ""), count, "hang")
        self._temporary = "dir" not in self.options
        self.folder = tempfile.mkdtemp(prefix="vhdtool-sim-") if self._temporary else self.options["dir"]
        os.makedirs(os.path.join(self.folder, "state"), exist_ok=True)
        self.guests = {g.name: g for g in (self._make_guest(i) for i in range(count))}

    @classmethod
    def supports(cls) -> str | None:
        return None

    def _state_path(self, name: str) -> str:
        return os.path.join(self.folder, "state", f"{name}.json")

    def _make_guest(self, index: int) -> _SimGuest:
        from vhdtool.ops.create import create

        disk = os.path.join(self.folder, f"sim-{index}.vhd")
        guest = _SimGuest(index, disk)
        if not self._temporary and os.path.exists(self._state_path(guest.name)):
            with open(self._state_path(guest.name), encoding="utf-8") as f:
                guest.load(json.load(f))
            return guest
        if not os.path.exists(disk):
            create(disk, size=DISK_SIZE)
        self._save(guest)
        return guest

    def _save(self, guest: _SimGuest) -> None:
        if self._temporary:
            return
        path = self._state_path(guest.name)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(guest.to_json(), f)
        os.replace(tmp, path)

    def _guest(self, name: str) -> _SimGuest:
        try:
            return self.guests[name]
        except KeyError:
            raise HypervisorError(f"simulated: no guest {name!r}") from None

    @contextlib.contextmanager
    def _command(self, guest: _SimGuest, phase: str, timeout: float) -> Iterator[None]:
        """Wait for the guest's previous command, play this one's latency and faults, let the
        caller change the guest, and save it."""
        if not guest.lock.acquire(timeout=max(timeout, 0.001)):
            raise OperationTimeout(f"{guest.name}: {phase}: still busy after {timeout:g}s")
        try:
            if (guest.index, phase) in self.hang:
                guest.cancel.wait(HANG_SECONDS)
                raise OperationTimeout(f"{guest.name}: {phase} never finished (simulated hang)")
            delay = self.latency.get("pause" if phase == "resume" else phase, 0.0)
            if delay:
                time.sleep(delay)
            if (guest.index, phase) in self.fail:
                raise HypervisorError(f"{guest.name}: {phase} failed (simulated fault)")
            yield
            self._save(guest)
        finally:
            guest.lock.release()

    def list_guests(self) -> list[Guest]:
        return [Guest(g.name, f"simulated in {self.folder}") for g in self.guests.values()]

    def list_disks(self, guest: str) -> list[Disk]:
        return [Disk(disk_id, path) for disk_id, path in self._guest(guest).active.items()]

    def probe_agent(self, guest: str, timeout: float) -> bool:
        g = self._guest(guest)
        return (g.index, "agent") not in self.fail

    def freeze(self, guest: str, timeout: float) -> int:
        g = self._guest(guest)
        if (g.index, "agent") in self.fail:
            raise AgentUnavailable(f"{guest}: no guest agent")
        g.cancel.clear()
        with self._command(g, "freeze", timeout):
            g.freeze = FreezeState.FROZEN
        return 1

    def thaw(self, guest: str, timeout: float) -> None:
        g = self._guest(guest)
        if (g.index, "agent") in self.fail:
            return  # nothing was frozen without an agent
        if (g.index, "thaw") not in self.hang:
            g.cancel.set()  # a hung command is cut off, as a stuck agent would be
        with self._command(g, "thaw", timeout):
            g.freeze = FreezeState.THAWED

    def pause(self, guest: str, timeout: float) -> None:
        g = self._guest(guest)
        g.cancel.clear()
        with self._command(g, "pause", timeout):
            g.run = RunState.PAUSED

    def resume(self, guest: str, timeout: float) -> None:
        g = self._guest(guest)
        if (g.index, "resume") not in self.hang:
            g.cancel.set()
        with self._command(g, "resume", timeout):
            g.run = RunState.RUNNING

    def switch_disk(self, guest: str, disk: Disk, layer: str, timeout: float) -> None:
        g = self._guest(guest)
        if disk.id not in g.active:
            raise HypervisorError(f"{guest}: no disk {disk.id}")
        if not os.path.isfile(layer):
            raise HypervisorError(f"{guest}: new layer {layer} does not exist")
        with self._command(g, "switch", timeout):
            g.active[disk.id] = layer

    def status(self, guest: str, timeout: float) -> GuestStatus:
        g = self._guest(guest)
        return GuestStatus(g.run, g.freeze, dict(g.active))

    def rescue_options(self) -> dict[str, str] | None:
        # in-memory guests die with this process; shared ones are reached again through the
        # folder, by an instance without this run's injected faults and latencies
        if self._temporary:
            return None
        return {"dir": self.folder, "guests": str(len(self.guests))}

    def keeps_layers(self) -> bool:
        return not self._temporary

    def close(self) -> None:
        for g in self.guests.values():
            g.cancel.set()
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
