"""The record of snapshot groups: one JSON file per group, so that ``snapshot list``, ``merge`` and
``discard`` know which layers a snapshot made, after the guests have stopped.

Folder: ``vhdtool.folders.snapshot_dir``, a persistent place, unlike the runner's state folder,
because snapshots outlive the guests that made them.

A record is written as ``prepared`` before any guest is frozen and rewritten ``complete`` at
the end (or removed when the group was rolled back), so a coordinator that died mid-way leaves a
trace that ``snapshot list`` shows and ``snapshot discard`` cleans.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.folders import record_names, snapshot_dir
from vhdtool.vss.report import Report

PREPARED = "prepared"
COMPLETE = "complete"


def folder() -> str:
    """The catalogue's folder (``vhdtool.folders.snapshot_dir``)."""
    return snapshot_dir()


@dataclass(slots=True)
class Record:
    report: Report
    state: str

    def to_json(self) -> dict[str, Any]:
        return {**self.report.to_json(), "state": self.state}


def _path(group: str, where: str | None = None) -> str:
    return os.path.join(where or folder(), f"{group}.json")


def save(report: Report, state: str, where: str | None = None) -> str:
    """Write the record atomically (temporary file, fsync, rename)."""
    base = where or folder()
    os.makedirs(base, exist_ok=True)
    path = _path(report.group, base)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(Record(report, state).to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def remove(group: str, where: str | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(group, where))


def load(group: str, where: str | None = None) -> Record:
    path = _path(group, where)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"no snapshot group {group!r} in {where or folder()}") from None
    except (OSError, ValueError) as e:
        raise VhdError(f"{path}: unreadable snapshot record: {e}") from None
    return Record(Report.from_json(doc), str(doc.get("state", COMPLETE)))


def records(where: str | None = None) -> list[Record]:
    """Every group on record, oldest first; unreadable files are skipped."""
    base = where or folder()
    found = []
    for name in record_names(base):
        try:
            found.append(load(name, base))
        except VhdError:
            continue
    return found


def find(snapshot: str, where: str | None = None) -> tuple[Record, list[tuple[str, str]]]:
    """The record holding ``snapshot`` — a group ID or the path of one point-in-time image — and
    the (snapshot, active) pairs it names."""
    if os.sep not in snapshot and os.path.exists(_path(snapshot, where)):
        record = load(snapshot, where)
        return record, [(d.snapshot, d.active) for g in record.report.guests for d in g.disks]
    wanted = os.path.realpath(snapshot)
    for record in records(where):
        for guest in record.report.guests:
            for d in guest.disks:
                if wanted in (os.path.realpath(d.snapshot), os.path.realpath(d.active)):
                    return record, [(d.snapshot, d.active)]
    raise UsageError(f"{snapshot}: neither a snapshot group nor an image of one on record in {where or folder()}")
