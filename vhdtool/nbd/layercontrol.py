"""The layer-switch endpoint a disk-serving process (the runner, `vhdtool serve`) offers other
processes, and the call that reaches it.

The NBD server switches its write layer atomically, but only from inside its own process; the
snapshot coordinator and `vhdtool ps` are other processes. ``LayerControl`` is the serving
process's side: a unix socket that takes one JSON request per line and answers one JSON line:

- ``{"op": "layers"}`` -> ``{"ok": true, "layers": {EXPORT: PATH}}`` — where each export writes.
- ``{"op": "switch", "export": E, "layer": PATH}`` -> ``{"ok": true}`` — PATH is either a new
  differencing child of E's current top, opened for writing over the device the server already
  holds (the old top stays open below it, read through the child), or the previous top again,
  which undoes the last switch (the coordinator's roll-back): the child is closed, the old device
  takes the writes again.
- errors -> ``{"ok": false, "error": MESSAGE}``.

The socket is created mode 0600 in the caller's (private) state folder. ``call`` is the other
side; its errors are ``LayerControlError`` (``LayerControlTimeout`` when no answer came in time),
which the snapshot coordinator's plugins turn into their own (``vhdtool.vss.control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import uuid
from typing import Any

from vhdtool.errors import LockedError, UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice, WholeFile
from vhdtool.format.image import ImageBase
from vhdtool.format.layers import open_over
from vhdtool.format.sparse import SparseImage
from vhdtool.nbd.server import NbdServer

MAX_REQUEST = 64 << 10


class LayerControlError(VhdError):
    """The endpoint refused a request, or could not be reached."""


class LayerControlTimeout(LayerControlError):
    """The endpoint gave no answer within the deadline."""


def open_child_for_writing(path: str, parent: BlockDevice) -> SparseImage:
    """Open the differencing image ``path`` for writing over ``parent``, a device this process
    already holds (its own lock on the parent file would refuse a second, shared lock)."""
    if not isinstance(parent, ImageBase):
        raise UsageError(f"{parent.path}: not a VHD, a VHD layer cannot sit on it")
    return open_over(path, parent, uuid.UUID(bytes=bytes(parent.meta.footer.unique_id)), writable=True)


def _relock(device: BlockDevice, exclusive: bool) -> None:
    """Turn the flock a device holds on its file into a shared or an exclusive one (flock
    converts in place on the same open file)."""
    if not isinstance(device, (ImageBase, WholeFile)):
        return  # no file of its own to lock
    try:
        fcntl.flock(device.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"{device.path}: another process holds the point-in-time image open") from None


class LayerControl:
    """Serves layer switches for the exports of ``server`` on the unix socket ``path``."""

    def __init__(self, server: NbdServer, path: str) -> None:
        self.server = server
        self.path = path
        self._below: dict[str, list[BlockDevice]] = {}
        """Per export, the devices that wrote before each switch (for undoing the last one)."""
        self._listener: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old_umask = os.umask(0o077)
        try:
            self._listener = await asyncio.start_unix_server(self._client, self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def layers(self) -> dict[str, str]:
        return {name: export.device.path for name, export in self.server.exports.items()}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    break  # an oversized request ends this connection only
                if not line:
                    break
                answer = await self.handle(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise UsageError("a request is a JSON object")
            op = request.get("op")
            if op == "layers":
                return {"ok": True, "layers": self.layers()}
            if op == "switch":
                async with self._lock:
                    await self._switch(str(request["export"]), str(request["layer"]))
                return {"ok": True}
            raise UsageError(f"unknown op {op!r}")
        except (VhdError, KeyError, ValueError) as e:
            return {"ok": False, "error": str(e) if not isinstance(e, KeyError) else f"missing {e}"}

    async def _switch(self, name: str, layer: str) -> None:
        export = self.server.exports.get(name)
        if export is None:
            raise UsageError(f"no export named {name!r}")
        current = export.device
        below = self._below.setdefault(name, [])
        if os.path.realpath(layer) == os.path.realpath(current.path):
            return  # already there: switching is idempotent
        loop = asyncio.get_running_loop()
        if below and os.path.realpath(layer) == os.path.realpath(below[-1].path):
            previous = below[-1]
            _relock(previous, exclusive=True)  # a writer again
            child = await self.server.switch_write_layer(name, previous)
            below.pop()
            await loop.run_in_executor(None, child.close)  # the child only: its parent writes again
            return
        child = await loop.run_in_executor(None, open_child_for_writing, layer, current)
        try:
            await self.server.switch_write_layer(name, child)
        except BaseException:
            child.close()
            raise
        below.append(current)
        # the old top is a parent now: hold it with a shared lock, as every parent is held, so
        # that other processes can open the chain (the next snapshot's create, a backup reading
        # the new layer) while nobody may write the point-in-time image
        _relock(current, exclusive=False)


def call(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to a LayerControl socket and return its answer; an answer with ``ok``
    false raises LayerControlError with the server's message."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(timeout, 0.001))
        try:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise LayerControlError(f"layer control {path}: connection closed")
                data += chunk
        except TimeoutError:
            raise LayerControlTimeout(f"layer control {path}: no answer within {timeout:g}s") from None
        except OSError as e:
            raise LayerControlError(f"layer control {path}: {e.strerror or e}") from None
    answer = json.loads(data)
    if not answer.get("ok"):
        raise LayerControlError(f"layer control: {answer.get('error', 'refused')}")
    return answer
