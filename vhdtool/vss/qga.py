"""A client of the QEMU guest agent (qemu-ga) on the host end of its channel (a unix socket that
QEMU's virtio-serial chardev listens on).

QEMU accepts one client on that socket at a time: whoever holds the connection — the coordinator
during a snapshot — keeps it from freeze to thaw, and the watchdog can connect only once the
coordinator's connection is gone. Each new connection first syncs with
``guest-sync-delimited`` behind a 0xFF byte, which resets the agent's parser and flushes any
answer left over from a previous client.
"""

from __future__ import annotations

import secrets

from vhdtool.vss.jsonsock import JsonSocket
from vhdtool.vss.plugin import AgentUnavailable, HypervisorError, OperationTimeout


class GuestAgent:
    def __init__(self, path: str, timeout: float) -> None:
        try:
            self._conn = JsonSocket(path, timeout, "guest agent")
        except HypervisorError as e:
            raise AgentUnavailable(str(e)) from None
        try:
            self.sync(timeout)
        except BaseException:
            self._conn.close()
            raise

    def sync(self, timeout: float) -> None:
        token = secrets.randbelow(1 << 31)
        try:
            answer = self._conn.call("guest-sync-delimited", {"id": token}, timeout, prefix=b"\xff")
        except OperationTimeout:
            raise AgentUnavailable(f"guest agent {self._conn.path}: no agent answers in the guest") from None
        if answer != token:
            raise AgentUnavailable(f"guest agent {self._conn.path}: sync answered {answer!r}, not {token}")

    def freeze(self, timeout: float) -> int:
        """Freeze every guest filesystem; returns how many were frozen."""
        return int(self._conn.call("guest-fsfreeze-freeze", None, timeout))

    def thaw(self, timeout: float) -> int:
        return int(self._conn.call("guest-fsfreeze-thaw", None, timeout))

    def status(self, timeout: float) -> str:
        """ "thawed" or "frozen"."""
        return str(self._conn.call("guest-fsfreeze-status", None, timeout))

    def call(self, command: str, arguments: dict[str, object] | None, timeout: float) -> object:
        return self._conn.call(command, arguments, timeout)

    def close(self) -> None:
        self._conn.close()
