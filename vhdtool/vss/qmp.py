"""A small blocking QMP client: greeting, capabilities negotiation, commands with deadlines.

Blocking on purpose: the coordinator calls hypervisors from one thread per guest, each with its
own deadline, and the watchdog must work in a bare process. (QEMU's QMP socket, unlike the
agent's, takes several clients at once.)
"""

from __future__ import annotations

import time
from typing import Any

from vhdtool.vss.jsonsock import JsonSocket
from vhdtool.vss.plugin import HypervisorError


class Qmp:
    def __init__(self, path: str, timeout: float) -> None:
        self._conn = JsonSocket(path, timeout, "QMP")
        try:
            greeting = self._conn.read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise HypervisorError(f"QMP {path}: no QMP greeting")
            self._conn.call("qmp_capabilities", None, timeout)
        except BaseException:
            self._conn.close()
            raise

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        return self._conn.call(command, arguments, timeout)

    def stop(self, timeout: float) -> None:
        self.execute("stop", None, timeout)

    def cont(self, timeout: float) -> None:
        self.execute("cont", None, timeout)

    def running(self, timeout: float) -> bool:
        return bool(self.execute("query-status", None, timeout)["running"])

    def close(self) -> None:
        self._conn.close()
