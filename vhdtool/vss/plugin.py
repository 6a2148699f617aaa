"""The hypervisor plugin interface: what the snapshot coordinator asks of any hypervisor.

A plugin is one class with a ``name``, a ``supports()`` check and a dozen blocking operations on
guests and disks; it registers under the entry point group ``vhdtool.hypervisors`` and the
coordinator never imports a plugin by name. Every operation may be called from several threads
at once, for different guests (the coordinator freezes a whole group in parallel).

Guests outlive the coordinator for most hypervisors. A plugin whose guests do says how another
process can reach them again (``rescue_options``): the watchdog uses that to thaw and resume
guests, and to drop unused layers, if the coordinator dies while guests are frozen.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from vhdtool.errors import UsageError, VhdError


class HypervisorError(VhdError):
    """A hypervisor, guest or guest agent refused or failed an operation."""


class AgentUnavailable(HypervisorError):
    """The guest has no guest agent, or it does not answer."""


class OperationTimeout(HypervisorError):
    """An operation did not finish before its deadline."""


class RunState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class FreezeState(enum.Enum):
    THAWED = "thawed"
    FROZEN = "frozen"
    UNKNOWN = "unknown"
    """No agent to ask."""


@dataclass(frozen=True, slots=True)
class Disk:
    """One disk of a guest as the hypervisor sees it now."""

    id: str
    """The plugin's name for the disk (``vda``, an export name, a libvirt target)."""
    path: str
    """The image the guest writes to now: the top of its chain."""
    layerable: bool = True
    """Whether vhdtool can put a VHD differencing layer on it (a VHD file)."""


@dataclass(frozen=True, slots=True)
class Guest:
    name: str
    detail: str = ""
    """Free text for listings (a pid, a libvirt UUID)."""


@dataclass(frozen=True, slots=True)
class GuestStatus:
    run: RunState
    freeze: FreezeState
    active_layers: dict[str, str] = field(default_factory=dict)
    """Disk id -> the image that disk writes to now."""


class Hypervisor(ABC):
    """Base class of every hypervisor plugin.

    ``options`` are the user's ``--hypervisor-opt KEY=VALUE`` pairs; a plugin rejects keys it
    does not know with a UsageError, so that typos do not pass silently.
    """

    name: str = ""
    """The name users pass to ``--hypervisor`` (the entry point's name)."""

    option_help: ClassVar[Mapping[str, str]] = {}
    """KEY -> description of the ``--hypervisor-opt`` keys this plugin understands."""

    for_tests: ClassVar[bool] = False
    """A plugin that snapshots no real guest (it exercises the coordinator): listed as such."""

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.option_help))
        if unknown:
            known = ", ".join(sorted(self.option_help)) or "none"
            raise UsageError(f"hypervisor {self.name}: unknown option {unknown[0]!r} (known: {known})")

    @classmethod
    @abstractmethod
    def supports(cls) -> str | None:
        """None when the plugin can work on this machine, else the reason it cannot."""

    @abstractmethod
    def list_guests(self) -> list[Guest]:
        """The guests this hypervisor runs now."""

    @abstractmethod
    def list_disks(self, guest: str) -> list[Disk]:
        """The disks of ``guest`` and the image each writes to now."""

    @abstractmethod
    def probe_agent(self, guest: str, timeout: float) -> bool:
        """Whether the guest agent answers within ``timeout`` seconds."""

    @abstractmethod
    def freeze(self, guest: str, timeout: float) -> int:
        """Quiesce the guest's filesystems through its agent; returns how many were frozen."""

    @abstractmethod
    def thaw(self, guest: str, timeout: float) -> None:
        """Thaw the guest's filesystems. Idempotent: thawing a thawed guest is not an error."""

    @abstractmethod
    def pause(self, guest: str, timeout: float) -> None:
        """Stop the guest's virtual CPUs (crash-consistent point in time)."""

    @abstractmethod
    def resume(self, guest: str, timeout: float) -> None:
        """Restart the guest's virtual CPUs. Idempotent."""

    @abstractmethod
    def switch_disk(self, guest: str, disk: Disk, layer: str, timeout: float) -> None:
        """Make ``disk`` write to ``layer`` from now on, atomically.

        ``layer`` is either a new differencing child of ``disk.path`` (the snapshot) or, when a
        group is rolled back, ``disk.path`` itself again.
        """

    @abstractmethod
    def status(self, guest: str, timeout: float) -> GuestStatus:
        """Whether the guest runs, whether it is frozen, and where its disks write."""

    def describe(self, guest: str) -> tuple[str, str]:
        """(plugin, guest name) as a report shows ``guest``."""
        return self.name, guest

    def layer_path(self, guest: str, disk: Disk, group: str) -> str:
        """Where the new write layer of ``disk`` goes for snapshot group ``group``."""
        from vhdtool.ops.overlay import snapshot_layer_path

        return snapshot_layer_path(disk.path, group)

    def layer_cost(self, guest: str, disk: Disk) -> int:
        """Bytes the new layer takes when created (for the space check)."""
        from vhdtool.vss.layers import layer_cost

        return layer_cost(disk.path)

    def new_layer(self, guest: str, disk: Disk, path: str) -> str:
        """Create the new write layer for ``disk`` at ``path`` (a VHD differencing child by
        default); a plugin whose hypervisor makes its own overlays overrides this."""
        from vhdtool.ops.overlay import create_overlay

        return create_overlay(disk.path, path)

    def rescue_options(self) -> dict[str, str] | None:
        """Options with which a new instance in another process reaches the same guests, or
        None when the guests cannot outlive this process (then no watchdog is needed)."""
        return dict(self.options)

    def keeps_layers(self) -> bool:
        """Whether the layers a snapshot makes outlive this process (then the group is recorded
        in the catalogue for ``snapshot list``, ``merge`` and ``discard``)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and temporary files."""

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
