"""The ``runner`` hypervisor: guests started by ``vhdtool run``, found through its state folder.

Quiesce goes through the QEMU guest agent channel (``vhdtool run --agent``), pause and resume
through QMP, and the layer switch through the runner's own disk servers: each runner process
hosts a ``vhdtool.vss.control.LayerControl`` endpoint next to its NBD server, which opens the new
differencing child over the device it serves and switches atomically.

The agent socket takes one client at a time, so the plugin keeps one agent connection per guest
from the probe to the thaw; a watchdog in another process can connect once this process's
connection is closed — by exit or by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from vhdtool.format.lock import held_elsewhere
from vhdtool.vss import control
from vhdtool.vss.plugin import (
    AgentUnavailable,
    Disk,
    FreezeState,
    Guest,
    GuestStatus,
    Hypervisor,
    HypervisorError,
    RunState,
)
from vhdtool.vss.qga import GuestAgent
from vhdtool.vss.qmp import Qmp


def default_state_dir() -> str:
    """The runner's state folder: ``$VHDTOOL_STATE_DIR``, else ``$XDG_RUNTIME_DIR/vhdtool``,
    else ``~/.cache/vhdtool/run`` (as ``vhdtool run`` keeps it)."""
    explicit = os.environ.get("VHDTOOL_STATE_DIR")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "vhdtool")
    return os.path.join(os.path.expanduser("~"), ".cache", "vhdtool", "run")


@dataclass(slots=True)
class Entry:
    """What the plugin needs of one running guest."""

    name: str
    pid: int
    qmp: str
    agent: str | None
    control: str
    disks: dict[str, str] = field(default_factory=dict)
    """Export name -> the image the runner was started with."""


def _alive(state_dir: str, name: str) -> bool:
    """Whether the runner of ``name`` lives: it holds ``NAME.lock`` with an exclusive flock for
    its whole life (see vhdtool.run.state); a lock we can take means a stale entry."""
    return held_elsewhere(os.path.join(state_dir, f"{name}.lock"))


def _read_entry(path: str) -> Entry | None:
    """One guest's state entry (a JSON file); None for anything that is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        disks = {str(d["export"]): str(d["image"]) for d in doc.get("disks", [])}
        return Entry(
            name=str(doc["name"]),
            pid=int(doc["pid"]),
            qmp=str(doc["qmp"]),
            agent=str(doc["agent"]) if doc.get("agent") else None,
            control=str(doc["control"]),
            disks=disks,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunnerHypervisor(Hypervisor):
    name = "runner"
    option_help: ClassVar[Mapping[str, str]] = {
        "state": "the runner's state folder (default: $VHDTOOL_STATE_DIR or as vhdtool run keeps it)",
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.state_dir = self.options.get("state") or default_state_dir()
        self._agents: dict[str, GuestAgent] = {}
        self._lock = threading.Lock()

    @classmethod
    def supports(cls) -> str | None:
        return None

    def _entries(self) -> dict[str, Entry]:
        """The live guests' entries (``NAME.json`` beside ``NAME.lock``, as vhdtool.run.state
        writes them); stale ones are skipped and left to ``vhdtool ps``/``run`` to clean."""
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            if not name.endswith(".json"):
                continue
            entry = _read_entry(os.path.join(self.state_dir, name))
            if entry is not None and _alive(self.state_dir, entry.name):
                found[entry.name] = entry
        return found

    def _entry(self, guest: str) -> Entry:
        entry = self._entries().get(guest)
        if entry is None:
            raise HypervisorError(f"runner: no running guest {guest!r} in {self.state_dir}")
        return entry

    def _agent(self, guest: str, timeout: float) -> GuestAgent:
        with self._lock:
            agent = self._agents.get(guest)
        if agent is not None:
            return agent
        entry = self._entry(guest)
        if entry.agent is None:
            raise AgentUnavailable(f"{guest}: started without --agent")
        agent = GuestAgent(entry.agent, timeout)
        with self._lock:
            self._agents[guest] = agent
        return agent

    def _drop_agent(self, guest: str) -> None:
        with self._lock:
            agent = self._agents.pop(guest, None)
        if agent is not None:
            agent.close()

    def _qmp(self, guest: str, timeout: float) -> Qmp:
        return Qmp(self._entry(guest).qmp, timeout)

    def list_guests(self) -> list[Guest]:
        return [Guest(e.name, f"pid {e.pid}") for e in self._entries().values()]

    def list_disks(self, guest: str) -> list[Disk]:
        entry = self._entry(guest)
        layers = control.call(entry.control, {"op": "layers"}, 10)["layers"]
        return [Disk(export, str(layers.get(export, image))) for export, image in entry.disks.items()]

    def probe_agent(self, guest: str, timeout: float) -> bool:
        try:
            self._agent(guest, timeout)
        except AgentUnavailable:
            self._drop_agent(guest)
            return False
        return True

    def freeze(self, guest: str, timeout: float) -> int:
        return self._agent(guest, timeout).freeze(timeout)

    def thaw(self, guest: str, timeout: float) -> None:
        if self._entry(guest).agent is None:
            return  # nothing can have been frozen without an agent
        try:
            self._agent(guest, timeout).thaw(timeout)
        except HypervisorError:
            # a broken connection is no proof of a thawed guest: try once more on a new one
            self._drop_agent(guest)
            self._agent(guest, timeout).thaw(timeout)

    def pause(self, guest: str, timeout: float) -> None:
        qmp = self._qmp(guest, timeout)
        try:
            qmp.stop(timeout)
        finally:
            qmp.close()

    def resume(self, guest: str, timeout: float) -> None:
        qmp = self._qmp(guest, timeout)
        try:
            qmp.cont(timeout)
        finally:
            qmp.close()

    def switch_disk(self, guest: str, disk: Disk, layer: str, timeout: float) -> None:
        entry = self._entry(guest)
        control.call(entry.control, {"op": "switch", "export": disk.id, "layer": layer}, timeout)

    def status(self, guest: str, timeout: float) -> GuestStatus:
        entry = self._entry(guest)
        qmp = self._qmp(guest, timeout)
        try:
            run = RunState.RUNNING if qmp.running(timeout) else RunState.PAUSED
        finally:
            qmp.close()
        freeze = FreezeState.UNKNOWN
        if entry.agent is not None:
            with contextlib.suppress(HypervisorError):
                freeze = FreezeState(self._agent(guest, timeout).status(timeout))
        layers = control.call(entry.control, {"op": "layers"}, timeout)["layers"]
        return GuestStatus(run, freeze, {k: str(v) for k, v in layers.items()})

    def rescue_options(self) -> dict[str, str] | None:
        return {"state": self.state_dir}

    def close(self) -> None:
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            agent.close()
