"""A small asyncio QMP client: the runner's own line to QEMU.

The runner needs four things from QMP — start the paused guest (``cont``), stop it (``quit``),
learn why it stopped (the ``SHUTDOWN`` event's reason), and ask its state — so a client of about
a hundred lines is clearer than a dependency. QMP is JSON, one object per line: a greeting, then
``qmp_capabilities``, then commands (answered by ``return`` or ``error`` with the command's
``id``) interleaved with ``event`` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from vhdtool.errors import VhdError

MAX_LINE = 16 << 20


class QmpError(VhdError):
    """QEMU answered a command with an error, or the monitor went away."""


class QmpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.shutdown = asyncio.Event()
        """Set on the SHUTDOWN event; ``shutdown_reason`` says why (guest-shutdown, guest-reset, ...)."""
        self.shutdown_reason: str | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: str) -> QmpClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        client = cls(reader, writer)
        try:
            greeting = json.loads(await reader.readline() or b"{}")
            if "QMP" not in greeting:
                raise QmpError(f"{path}: no QMP greeting")
            client._task = asyncio.create_task(client._read_loop())
            await client.execute("qmp_capabilities")
        except BaseException:
            await client.close()
            raise
        return client

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        ident = next(self._ids)
        request: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self._pending.pop(ident, None)
            raise QmpError(f"QMP {command}: monitor closed ({e})") from None
        return await future

    async def _read_loop(self) -> None:
        error: Exception = QmpError("QMP: monitor closed")
        try:
            while line := await self._reader.readline():
                self._dispatch(json.loads(line))
        except (ConnectionError, ValueError) as e:
            error = QmpError(f"QMP: {e}")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self.events.append(message)
            if message["event"] == "SHUTDOWN":
                self.shutdown_reason = str(message.get("data", {}).get("reason", "unknown"))
                self.shutdown.set()
            return
        future = self._pending.pop(message.get("id", -1), None)
        if future is None or future.done():
            return
        if "error" in message:
            desc = message["error"].get("desc", message["error"])
            future.set_exception(QmpError(f"QMP: {desc}"))
        else:
            future.set_result(message.get("return"))

    async def wait_closed(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for QEMU to close the monitor (all events read)."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
