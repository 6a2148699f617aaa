"""The runner's QMP client against a real QEMU (an empty machine: no guest needed)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import qemu_monitor
from vhdtool.run.qmp import QmpClient, QmpError


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with qemu_monitor(tmp_path, paused=True) as running:
        yield running


def test_commands_errors_events_and_the_end_of_the_monitor(monitor: tuple[str, subprocess.Popen[bytes]]) -> None:
    sock, qemu = monitor

    async def session() -> None:
        client = await QmpClient.connect(sock)
        try:
            assert (await client.execute("query-status"))["status"] == "prelaunch"
            with pytest.raises(QmpError, match="no-such-command"):
                await client.execute("no-such-command")
            await client.execute("cont")
            await client.execute("quit")
            await client.wait_closed(10)
            assert client.shutdown.is_set() and client.shutdown_reason == "host-qmp-quit"
            assert [e["event"] for e in client.events] == ["RESUME", "SHUTDOWN"]
            with pytest.raises(QmpError, match="monitor closed"):
                await client.execute("query-status")
        finally:
            await client.close()
        with pytest.raises(OSError):  # no monitor any more: as a plain connect reports it
            await QmpClient.connect(sock)

    asyncio.run(session())
    assert qemu.wait(10) == 0
