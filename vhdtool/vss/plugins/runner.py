"""The ``runner`` hypervisor: guests started by ``vhdtool run``, found through its state folder.

Quiesce goes through the QEMU guest agent channel (``vhdtool run --agent``), pause and resume
through QMP, and the layer switch through the runner's own disk servers: each runner process
hosts a ``vhdtool.nbd.layercontrol.LayerControl`` endpoint next to its NBD server, which opens the new
differencing child over the device it serves and switches atomically.

The agent socket takes one client at a time, so the plugin keeps one agent connection per guest
from the probe to the thaw; a watchdog in another process can connect once this process's
connection is closed — by exit or by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from typing import ClassVar

from vhdtool.folders import state_dir
from vhdtool.run import state
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


class RunnerHypervisor(Hypervisor):
    name = "runner"
    option_help: ClassVar[Mapping[str, str]] = {
        "state": "the runner's state folder (default: $VHDTOOL_STATE_DIR or as vhdtool run keeps it)",
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.state_dir = os.path.abspath(self.options.get("state") or state_dir())
        self._agents: dict[str, GuestAgent] = {}
        self._lock = threading.Lock()

    @classmethod
    def supports(cls) -> str | None:
        return None

    def _entries(self) -> dict[str, state.Entry]:
        """The live guests, as vhdtool.run.state keeps them (stale entries are cleaned)."""
        return {e.name: e for e in state.entries(self.state_dir)}

    def _entry(self, guest: str) -> state.Entry:
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
        images = {str(d["export"]): str(d["image"]) for d in entry.disks}
        return [Disk(export, str(layers.get(export, image))) for export, image in images.items()]

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
