"""The runner's line to QEMU's monitor, spoken through ``qemu.qmp`` (QEMU's own QMP library).

The runner needs four things from QMP: start the paused guest (``cont``), stop it (``quit``),
learn why it stopped (the ``SHUTDOWN`` event's reason), and ask its state. ``QmpClient`` keeps
the small interface the runner and the snapshot plugins were written against (``connect``,
``execute``, ``events``, ``shutdown``/``shutdown_reason``, ``wait_closed``, ``close``) and turns
the library's errors into one ``QmpError`` that names the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
    Runstate,
    StateError,
)

from vhdtool.errors import VhdError

MAX_LINE = 16 << 20
"""The longest monitor message read (a query-block of many disks is long)."""

# qemu.qmp logs each connection failure it then raises to us; we report it once, as a QmpError.
_library_log = logging.getLogger("qemu.qmp")
_library_log.addHandler(logging.NullHandler())
_library_log.propagate = False


class QmpError(VhdError):
    """QEMU answered a command with an error, or the monitor went away."""


class _Recorder(EventListener):
    """Records every event on the client as the library reads it (before it reads the next
    message, so an event QEMU sent before closing the monitor is never missed)."""

    def __init__(self, client: QmpClient) -> None:
        super().__init__()
        self._client = client

    def accept(self, event: Message) -> bool:
        self._client._record(dict(event))
        return False  # recorded here: nothing to queue


class QmpClient:
    def __init__(self, qmp: QMPClient) -> None:
        self._qmp = qmp
        self.events: list[dict[str, Any]] = []
        self.shutdown = asyncio.Event()
        """Set on the SHUTDOWN event; ``shutdown_reason`` says why (guest-shutdown, guest-reset, ...)."""
        self.shutdown_reason: str | None = None
        qmp.register_listener(_Recorder(self))

    @classmethod
    async def connect(cls, path: str) -> QmpClient:
        """Connect to the monitor socket ``path``: greeting and capabilities negotiation."""
        client = cls(QMPClient(path, readbuflen=MAX_LINE))
        try:
            await client._qmp.connect(path)
        except ConnectError as e:
            await client.close()
            if isinstance(e.exc, OSError):
                raise e.exc from None  # no socket (yet), refused: as a plain connect reports it
            raise QmpError(f"{path}: {e}") from None
        except BaseException:
            await client.close()
            raise
        return client

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self._qmp.execute(command, arguments)
        except ExecuteError as e:
            raise QmpError(f"QMP: {e}") from None
        except (ExecInterruptedError, StateError, ConnectionError):
            raise QmpError(f"QMP {command}: monitor closed") from None
        except QMPError as e:
            raise QmpError(f"QMP {command}: {e}") from None

    def _record(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("event") == "SHUTDOWN":
            self.shutdown_reason = str(event.get("data", {}).get("reason", "unknown"))
            self.shutdown.set()

    async def wait_closed(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for QEMU to close the monitor (all events read)."""

        async def closed() -> None:
            while self._qmp.runstate == Runstate.RUNNING:
                await self._qmp.runstate_changed()

        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(closed(), timeout)

    async def close(self) -> None:
        # disconnect() re-raises what ended the session (QEMU closing the socket under us is the
        # usual end of a run, not an error)
        with contextlib.suppress(QMPError, ConnectionError, OSError, EOFError):
            await self._qmp.disconnect()
