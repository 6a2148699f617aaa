"""The runner's state folder: one entry per running guest, so that ``vhdtool ps`` and the snapshot
coordinator (the ``runner`` hypervisor plugin) can find guests started by ``vhdtool run``.

Folder: ``vhdtool.folders.state_dir``.

For a guest named NAME it holds:

- ``NAME.lock`` — held with an exclusive ``flock`` by the ``vhdtool run`` process for its whole
  life. This, not a pid, says whether the guest is alive: the kernel drops the lock however the
  runner ends (``kill -9`` included), and QEMU dies with its runner. An entry whose lock can be
  taken is stale; whoever finds it (``ps``, a new ``run``, :func:`entries`) removes it.
- ``NAME.json`` — the entry, written atomically (temporary file + rename) once the guest has
  been started::

      {
        "version": 1,
        "name": "web1",
        "pid": 4242,                          # the vhdtool run process (NBD server, control socket)
        "qemu_pid": 4250,
        "started": 1732780000.5,              # time.time()
        "accel": "tcg",
        "qmp": "/run/user/0/vhdtool/web1/qmp.sock",       # QMP, free for other clients
        "agent": "/run/user/0/vhdtool/web1/agent.sock",   # qemu-ga channel, or null without --agent
        "control": "/run/user/0/vhdtool/web1/control.sock",
        "snapshot": false,                    # --snapshot: writes go to a throw-away layer
        "scratch": null,                      # folder of those throw-away layers, removed at exit
        "incoming": null,                     # --incoming: the migration address it waits (waited) on
        "disks": [
          {"id": "vda",                       # the guest's /dev/vda
           "export": "vda",                   # its NBD export (and its name on the control socket)
           "image": "/srv/web1.vhd",          # the image the user named
           "nbd": {"socket": "/run/user/0/vhdtool/web1/nbd.sock", "export": "vda"}}
        ]
      }

- ``NAME/`` — the unix sockets named in the entry. QEMU's QMP and agent sockets take one
  client at a time; the runner talks to QEMU over a private monitor of its own
  (``NAME/runner.qmp``), so ``qmp`` is free for others.

The write layer of a running disk is switched by asking the runner process, whose NBD server
feeds the disk: its ``control`` socket is a ``vhdtool.nbd.layercontrol.LayerControl`` endpoint — one
JSON request per line, ``{"op": "layers"}`` (where each export writes now) and ``{"op": "switch",
"export": "vda", "layer": PATH}`` (to a new differencing child of the current top, opened over
the device already served, or back to the previous top); ``vhdtool.nbd.layercontrol.call`` is a
client. Where a disk writes now is asked there, not kept in the entry.

Everything is removed when the guest stops. A runner killed with -9 leaves its files behind
(QEMU dies with it); the next ``ps`` or ``run`` finds the lock free and removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.folders import state_dir
from vhdtool.ops.overlay import remove_scratch_folder

VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SOCKET_PATH_MAX = 107
"""Longest unix socket path Linux accepts (sun_path is 108 bytes with the terminating NUL)."""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def default_name(image: str) -> str:
    """The image's file stem, made into a valid name ('my disk.vhd' -> 'my_disk')."""
    stem = os.path.splitext(os.path.basename(image))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:60]
    return stem or "guest"


@dataclass(frozen=True, slots=True)
class Entry:
    """A running guest, as its entry file describes it."""

    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.doc["name"])

    @property
    def pid(self) -> int:
        return int(self.doc["pid"])

    @property
    def qmp(self) -> str:
        return str(self.doc["qmp"])

    @property
    def agent(self) -> str | None:
        value = self.doc.get("agent")
        return None if value is None else str(value)

    @property
    def control(self) -> str:
        return str(self.doc["control"])

    @property
    def disks(self) -> list[dict[str, Any]]:
        return list(self.doc.get("disks", []))


def _paths(base: str, name: str) -> tuple[str, str, str]:
    return os.path.join(base, f"{name}.lock"), os.path.join(base, f"{name}.json"), os.path.join(base, name)


def _try_lock(path: str, create: bool) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when someone else holds it.

    A cleaner may unlink the lock file between our open and our flock; then we would hold a
    lock on a file nobody else can see, so the inode is checked after locking and we retry.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        if not create:
            return None


def _remove_files(base: str, name: str) -> None:
    """Remove an entry, its socket folder and its scratch folder (the caller holds the lock)."""
    _, entry_path, folder = _paths(base, name)
    scratch = None
    with contextlib.suppress(OSError, ValueError), open(entry_path, encoding="utf-8") as f:
        scratch = json.load(f).get("scratch")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry_path)
    shutil.rmtree(folder, ignore_errors=True)
    if isinstance(scratch, str):
        remove_scratch_folder(scratch)  # only a folder named as a scratch folder


def _clean_if_stale(base: str, name: str) -> bool:
    """Remove the entry NAME if its runner is gone; True if it was stale."""
    lock_path = _paths(base, name)[0]
    fd = _try_lock(lock_path, create=False)
    if fd is None:
        if os.path.exists(lock_path):
            return False  # a live runner holds it
        # an entry without a lock file: left by a runner killed between steps, or copied around
        _remove_files(base, name)
        return True
    try:
        _remove_files(base, name)
        os.unlink(lock_path)
    finally:
        os.close(fd)
    return True


class Claim:
    """A guest name held by this process: its lock, entry file and socket folder."""

    def __init__(self, base: str, name: str, lock_fd: int) -> None:
        self.base = base
        self.name = name
        self._lock_fd = lock_fd
        self.lock_path, self.entry_path, self.folder = _paths(base, name)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)

    def socket(self, filename: str) -> str:
        path = os.path.join(self.folder, filename)
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise UsageError(
                f"{path}: longer than the {SOCKET_PATH_MAX} bytes a unix socket path may have; "
                "set VHDTOOL_STATE_DIR to a shorter folder"
            )
        return path

    def write(self, doc: dict[str, Any]) -> None:
        """Publish the entry atomically."""
        tmp = f"{self.entry_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "name": self.name, **doc}, f, indent=1)
        os.replace(tmp, self.entry_path)

    def release(self) -> None:
        """Remove the entry, the socket folder and the lock file; safe to call twice."""
        if self._lock_fd < 0:
            return
        try:
            _remove_files(self.base, self.name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1


def claim(name: str | None, image: str) -> Claim:
    """Take ``name`` (explicit: it must be free) or the image's stem made unique (``disk``,
    ``disk-2``, ...). Stale entries in the way are cleaned first."""
    base = state_dir()
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as e:
        raise VhdError(f"{base}: cannot make the state folder: {e.strerror}") from None
    if name is not None:
        candidates: Iterator[str] = iter([check_name(name)])
    else:
        stem = default_name(image)
        candidates = (stem if i == 1 else f"{stem}-{i}" for i in range(1, 1000))
    for candidate in candidates:
        _clean_if_stale(base, candidate)
        fd = _try_lock(_paths(base, candidate)[0], create=True)
        if fd is None:
            if name is not None:
                running = _read(base, candidate)
                pid = f" (pid {running.pid})" if running else ""
                raise UsageError(f"a guest named {name!r} is already running{pid}; choose another --name")
            continue
        # a runner killed after writing parts of its entry left them behind under our new lock
        _remove_files(base, candidate)
        return Claim(base, candidate, fd)
    raise UsageError(f"no free guest name for {image} in {base}")


def _read(base: str, name: str) -> Entry | None:
    try:
        with open(_paths(base, name)[1], encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("name") != name:
        return None
    return Entry(doc)


def entries(base: str | None = None) -> list[Entry]:
    """Every running guest, by name, in ``base`` (default: the state folder); stale entries found
    on the way are removed."""
    base = base or state_dir()
    try:
        files = os.listdir(base)
    except FileNotFoundError:
        return []
    names = sorted({f[: -len(suffix)] for f in files for suffix in (".json", ".lock") if f.endswith(suffix)})
    found = []
    for name in names:
        if _clean_if_stale(base, name):
            continue
        entry = _read(base, name)
        if entry is not None:  # None: a runner still starting
            found.append(entry)
    return found


def find(name: str) -> Entry:
    """The running guest ``name``; a UsageError listing the running ones if there is none."""
    for entry in entries():
        if entry.name == name:
            return entry
    running = ", ".join(e.name for e in entries()) or "none"
    raise UsageError(f"no running guest named {name!r} in {state_dir()} (running: {running})")


def wait_for(name: str, timeout: float) -> Entry:
    """The entry of ``name`` once its runner has published it (for scripts that start a guest
    in the background and then talk to it)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = None if _clean_if_stale(state_dir(), name) else _read(state_dir(), name)
        if entry is not None:
            return entry
        if time.monotonic() > deadline:
            raise VhdError(f"guest {name!r} did not appear in {state_dir()} within {timeout:g} s")
        time.sleep(0.05)


def unlink_socket(path: str) -> None:
    """Remove a socket file QEMU listened on (it leaves them behind); anything else stays."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
