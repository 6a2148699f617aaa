"""`vhdtool serve` processes on record, so that a hypervisor plugin can find which server feeds a
disk whose source is a unix socket (a libvirt ``<disk type='network'>`` over NBD) and ask that
server to switch the disk's write layer, as the runner's own disk servers do.

Folder: ``serve/`` in the state folder (``vhdtool.folders.state_dir()``). A server
of process id P keeps there, for its whole life:

- ``P.lock`` — an exclusive ``flock`` held by the serving process; the kernel drops it however
  the process ends, so a free lock means a stale entry (skipped, and removed by whoever finds it);
- ``P.json`` — ``{"version": 1, "pid": P, "socket": NBD_SOCKET, "control": CONTROL_SOCKET,
  "image": IMAGE, "exports": [NAME…]}``, written atomically once clients can connect;
- ``P.control.sock`` — its ``vhdtool.nbd.layercontrol.LayerControl`` endpoint (mode 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vhdtool.folders import record_names, state_dir
from vhdtool.format.lock import held_elsewhere
from vhdtool.nbd.layercontrol import LayerControl
from vhdtool.nbd.server import NbdServer

VERSION = 1


def folder() -> str:
    return os.path.join(state_dir(), "serve")


@dataclass(frozen=True, slots=True)
class Served:
    """A live `vhdtool serve` process as its entry describes it."""

    pid: int
    socket: str
    control: str
    image: str
    exports: tuple[str, ...]


@contextlib.asynccontextmanager
async def registered(server: NbdServer, socket_path: str, image: str) -> AsyncIterator[Served]:
    """Offer layer switches for ``server``'s exports and publish the entry; remove both on exit."""
    base = folder()
    os.makedirs(base, mode=0o700, exist_ok=True)
    pid = os.getpid()
    lock_path, entry_path = os.path.join(base, f"{pid}.lock"), os.path.join(base, f"{pid}.json")
    lock_fd = _lock(lock_path)
    with contextlib.suppress(FileNotFoundError):  # left by an earlier process of our pid
        os.unlink(entry_path)
    control = LayerControl(server, os.path.join(base, f"{pid}.control.sock"))
    try:
        await control.start()
        entry = Served(pid, os.path.abspath(socket_path), control.path, os.path.abspath(image), tuple(server.exports))
        doc = {"version": VERSION, "pid": pid, "socket": entry.socket, "control": entry.control,
               "image": entry.image, "exports": list(entry.exports)}  # fmt: skip
        tmp = f"{entry_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, entry_path)
        yield entry
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry_path)
        await control.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(lock_fd)


def _lock(path: str) -> int:
    """An fd holding the exclusive flock on ``path``. The file is named after our pid, so any
    earlier holder is dead; but a finder may remove it as stale between our open and our flock,
    so the lock must be on the file that is still there."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def entries() -> list[Served]:
    """The live servers on record; stale entries are removed on the way."""
    base = folder()
    found = []
    for name in record_names(base):
        stem = os.path.join(base, name)
        if not held_elsewhere(f"{stem}.lock"):
            for leftover in (f"{stem}.json", f"{stem}.lock", f"{stem}.control.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            continue
        try:
            with open(f"{stem}.json", encoding="utf-8") as f:
                doc = json.load(f)
            found.append(Served(int(doc["pid"]), str(doc["socket"]), str(doc["control"]), str(doc["image"]),
                                tuple(str(e) for e in doc["exports"])))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written or removed right now, or not ours
    return found


def find(socket_path: str) -> Served | None:
    """The live server listening on ``socket_path``, if vhdtool serves it."""
    wanted = os.path.realpath(socket_path)
    return next((s for s in entries() if os.path.realpath(s.socket) == wanted), None)
