"""What a snapshot did, per guest and per disk, as data and as the documented JSON document:

``{"group", "consistent", "freeze_window_ms", "guests": [{"name", "quiesced", "disks":
[{"snapshot", "active"}]}]}`` plus a few extra keys (hypervisor, created, error, per guest its
hypervisor plugin, the mode and an error, per disk its id) that scripts may ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class DiskResult:
    id: str
    snapshot: str
    """The point-in-time image: the disk's top image before the snapshot."""
    active: str
    """The new write layer the guest writes to after the snapshot."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "snapshot": self.snapshot, "active": self.active}


@dataclass(slots=True)
class GuestResult:
    name: str
    mode: str
    """"freeze" (agent quiesce), "pause" (crash-consistent) or "none" (not touched)."""
    quiesced: bool = False
    frozen_filesystems: int | None = None
    disks: list[DiskResult] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    """Why a guest was only paused (no agent, a failed freeze under --quiesce preferred)."""
    hypervisor: str = ""
    """The plugin that runs the guest (groups may span several)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "hypervisor": self.hypervisor,
            "quiesced": self.quiesced,
            "mode": self.mode,
            "disks": [d.to_json() for d in self.disks],
        }
        if self.frozen_filesystems is not None:
            doc["frozen_filesystems"] = self.frozen_filesystems
        if self.error:
            doc["error"] = self.error
        if self.note:
            doc["note"] = self.note
        return doc


@dataclass(slots=True)
class Report:
    group: str
    hypervisor: str
    created: float
    guests: list[GuestResult] = field(default_factory=list)
    freeze_window_ms: int = 0
    error: str | None = None
    watchdog: str | None = None
    """What was handed to the watchdog, when the coordinator could not finish a thaw itself."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def consistent(self) -> bool:
        """Every guest of the group was quiesced and the snapshot was taken."""
        return self.ok and bool(self.guests) and all(g.quiesced for g in self.guests)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "group": self.group,
            "consistent": self.consistent,
            "freeze_window_ms": self.freeze_window_ms,
            "hypervisor": self.hypervisor,
            "created": self.created,
            "guests": [g.to_json() for g in self.guests],
        }
        doc["error"] = self.error
        if self.watchdog:
            doc["watchdog"] = self.watchdog
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Report:
        report = cls(
            group=str(doc["group"]),
            hypervisor=str(doc.get("hypervisor", "")),
            created=float(doc.get("created", 0)),
            freeze_window_ms=int(doc.get("freeze_window_ms", 0)),
            error=doc.get("error"),
            watchdog=doc.get("watchdog"),
        )
        for g in doc.get("guests", []):
            report.guests.append(
                GuestResult(
                    name=str(g["name"]),
                    mode=str(g.get("mode", "")),
                    quiesced=bool(g.get("quiesced")),
                    frozen_filesystems=g.get("frozen_filesystems"),
                    disks=[DiskResult(str(d.get("id", "")), str(d["snapshot"]), str(d["active"])) for d in g["disks"]],
                    error=g.get("error"),
                    note=g.get("note"),
                    hypervisor=str(g.get("hypervisor", report.hypervisor)),
                )
            )
        return report
