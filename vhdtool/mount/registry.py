"""What vhdtool has mounted: one small JSON record per mountpoint in a runtime folder.

The mount server writes its record (claimed with O_EXCL, so two mounts cannot race for one
mountpoint) and keeps it current; ``umount`` and ``mount --list`` read it. A record outlives its
server in two cases: the server stopped with an undo disk still pending (state ``stopped``: the
user decides later to commit or discard), or the server was killed (state ``mounted`` but the
process is gone: ``stale``, cleaned up by ``umount``). Processes are identified by pid *and*
start time, so a recycled pid is never mistaken for a live server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.folders import runtime_dir as runtime_base

STARTING = "starting"
MOUNTED = "mounted"
STOPPED = "stopped"
STALE = "stale"
"""Not stored: what ``status()`` calls a starting or mounted record whose server is gone."""


@dataclass
class MountRecord:
    """One mount: where, of what, how, and the processes and devices that serve it."""

    mountpoint: str
    image: str
    mode: str
    """``undo`` (writes go to ``undo``), ``direct`` (into the image) or ``read-only``."""
    undo: str | None
    raw: bool
    raw_dir: str
    """Where the raw view (disk, p1..pN) is mounted: the mountpoint itself with --raw."""
    log: str
    server_pid: int
    server_start: int
    partition: int | None = None
    fs: str | None = None
    driver: str | None = None
    """``kernel`` or the FUSE program (fuse2fs, fusefat, ntfs-3g); None for a raw view."""
    loop: str | None = None
    helper_pid: int | None = None
    helper_start: int | None = None
    state: str = STARTING
    failed_writes: int = 0
    """Writes (and flushes) the server answered with an error: the filesystem may be torn."""
    write_error: str | None = None
    """The first of them, naming the file and the cause."""

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = status(self)
        return doc


def runtime_dir() -> Path:
    """The registry's folder, ``mounts`` in the runtime folder (vhdtool.folders), made if need be."""
    folder = Path(runtime_base()) / "mounts"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise VhdError(f"{folder}: cannot make the mount registry folder: {e.strerror}") from None
    return folder


def _key(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


def record_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.json"


def private_dir(mountpoint: str) -> Path:
    """Where a filesystem mount keeps its raw view (not shown to the user)."""
    return runtime_dir() / f"{_key(mountpoint)}.raw"


def log_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.log"


def claim(record: MountRecord) -> None:
    """Store a new record; refuse when the mountpoint already has one."""
    path = record_path(record.mountpoint)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{record.mountpoint}: vhdtool has a mount there already ('vhdtool mount --list')") from None
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)


def save(record: MountRecord) -> None:
    """Replace the record atomically (readers never see half a file)."""
    path = record_path(record.mountpoint)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def update(mountpoint: str, **changes: Any) -> None:
    """Change some fields of the saved record, keeping whatever else was written into it since
    this process read it (the server's copy is the one from the start of the mount)."""
    record = load(mountpoint)
    if record is not None:
        save(replace(record, **changes))


def load(mountpoint: str) -> MountRecord | None:
    return _read(record_path(mountpoint))


def remove(mountpoint: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(mountpoint).unlink()


def records() -> list[MountRecord]:
    found = (_read(p) for p in sorted(runtime_dir().glob("*.json")))
    return sorted((r for r in found if r is not None), key=lambda r: r.mountpoint)


def _read(path: Path) -> MountRecord | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = {f.name for f in fields(MountRecord)}
    try:
        return MountRecord(**{k: v for k, v in doc.items() if k in known})
    except TypeError:  # a record from another version of vhdtool missing a field
        return None


@dataclass(frozen=True, slots=True)
class Ended:
    """How the last mount at a mount point ended: its undo disk committed or discarded."""

    record: MountRecord
    action: str
    committed: int


def _ended_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.ended"


def remember_end(record: MountRecord, action: str, committed: int) -> None:
    """Keep how this mount ended, so that an umount repeated after it (its first run killed once
    the work was done) can say so instead of failing as if nothing had been mounted."""
    path = _ended_path(record.mountpoint)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"record": asdict(record), "action": action, "committed": committed}))
    os.replace(tmp, path)


def last_end(mountpoint: str) -> Ended | None:
    try:
        doc = json.loads(_ended_path(mountpoint).read_text())
        known = {f.name for f in fields(MountRecord)}
        record = MountRecord(**{k: v for k, v in doc["record"].items() if k in known})
        return Ended(record, str(doc["action"]), int(doc["committed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_by_undo(undo: str) -> MountRecord | None:
    real = os.path.realpath(undo)
    return next((r for r in records() if r.undo and os.path.realpath(r.undo) == real), None)


def find_pending_over(image: str) -> MountRecord | None:
    """A mount whose undo disk over ``image`` is not committed or discarded yet, whatever that
    disk is named (a mount started by an earlier vhdtool named it otherwise, and ends with it)."""
    real = os.path.realpath(image)
    return next((r for r in records() if r.mode == "undo" and os.path.realpath(r.image) == real), None)


# -- processes ------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if it
    does not exist or has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def alive(pid: int | None, started: int | None) -> bool:
    return pid is not None and started is not None and start_time(pid) == started


def status(record: MountRecord) -> str:
    """``mounted``, ``starting``, ``stopped`` (undo disk pending) or ``stale`` (server gone)."""
    if record.state == STOPPED:
        return STOPPED
    return record.state if alive(record.server_pid, record.server_start) else STALE
