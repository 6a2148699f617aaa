"""A blocking QMP client with a deadline on every call: ``run.qmp.QmpClient`` (over ``qemu.qmp``)
driven on an event loop of its own.

Blocking on purpose: the coordinator calls hypervisors from one thread per guest, each with its
own deadline, and the watchdog must work in a bare process. An answer that arrives after its
caller gave up is dropped by the library, which matches answers to commands by id. (QEMU's QMP
socket, unlike the agent's, takes several clients at once.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from vhdtool.run.qmp import QmpClient, QmpError
from vhdtool.vss.plugin import HypervisorError, OperationTimeout

_T = TypeVar("_T")


class Qmp:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._run(QmpClient.connect(path), timeout, "connect")
        except BaseException:
            self._loop.close()
            raise

    def _run(self, call: Coroutine[Any, Any, _T], timeout: float, what: str) -> _T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(call, max(timeout, 0.001)))
        except TimeoutError:
            raise OperationTimeout(f"QMP {self.path}: {what}: no answer in time") from None
        except QmpError as e:
            raise HypervisorError(f"QMP {self.path}: {what}: {e}") from None
        except OSError as e:
            raise HypervisorError(f"QMP {self.path}: cannot connect: {e.strerror or e}") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        return self._run(self._client.execute(command, arguments), timeout, command)

    def stop(self, timeout: float) -> None:
        self.execute("stop", None, timeout)

    def cont(self, timeout: float) -> None:
        self.execute("cont", None, timeout)

    def running(self, timeout: float) -> bool:
        return bool(self.execute("query-status", None, timeout)["running"])

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._client.close())
        finally:
            self._loop.close()
