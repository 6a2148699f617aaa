"""Where a migration goes: ``unix:PATH`` or ``tcp:HOST:PORT``, and where the destination's disks are.

A destination guest (``vhdtool run --incoming ADDRESS``) listens twice: its QEMU takes the RAM and
device state at ADDRESS, and its runner serves the guest's disks over NBD, for the source's
mirror, at the address beside it — ``PATH.nbd`` for ``unix:PATH``, port ``PORT + 1`` on the same
host for ``tcp:HOST:PORT``. So ``vhdtool migrate --to ADDRESS`` needs only the one address, on
this host or another one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import UsageError
from vhdtool.run.state import SOCKET_PATH_MAX

DISKS_SUFFIX = ".nbd"


@dataclass(frozen=True, slots=True)
class MigrationAddress:
    path: str | None = None
    """The unix socket QEMU's migration stream uses (absolute), or None for TCP."""
    host: str = ""
    port: int = 0

    @property
    def uri(self) -> str:
        """QEMU's migration URI (``-incoming``, the ``migrate`` command)."""
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    @property
    def disks_path(self) -> str | None:
        """The unix socket the destination serves its disks on (None for TCP)."""
        return None if self.path is None else self.path + DISKS_SUFFIX

    @property
    def disks_port(self) -> int:
        return self.port + 1

    def disks_server(self) -> dict[str, Any]:
        """The destination's disk server as a QEMU SocketAddress (for an ``nbd`` blockdev)."""
        if self.disks_path is not None:
            return {"type": "unix", "path": self.disks_path}
        return {"type": "inet", "host": self.host, "port": str(self.disks_port)}

    def describe_disks(self) -> str:
        if self.disks_path is not None:
            return f"unix:{self.disks_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.disks_port}"


def parse(text: str, option: str) -> MigrationAddress:
    """``unix:PATH`` (made absolute: QEMU runs in another folder) or ``tcp:HOST:PORT``."""
    kind, sep, rest = text.partition(":")
    if sep and kind == "unix" and rest:
        path = os.path.abspath(rest)
        if len(os.fsencode(path + DISKS_SUFFIX)) > SOCKET_PATH_MAX:
            raise UsageError(f"{option} {text}: too long for a unix socket path (with {DISKS_SUFFIX} added)")
        return MigrationAddress(path=path)
    if sep and kind == "tcp":
        host, colon, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if colon and host and port.isdigit() and 0 < int(port) < 65535:
            return MigrationAddress(host=host, port=int(port))
        raise UsageError(f"{option} {text}: give tcp:HOST:PORT with PORT from 1 to 65534 (PORT+1 serves the disks)")
    raise UsageError(f"{option} {text}: give unix:PATH or tcp:HOST:PORT")
