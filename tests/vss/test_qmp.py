"""The snapshot plugins' blocking QMP client against a real QEMU (an empty machine), from a
worker thread as the coordinator calls it, and against a monitor that never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import qemu_monitor
from vhdtool.vss.plugin import HypervisorError, OperationTimeout
from vhdtool.vss.qmp import Qmp


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[str]:
    with qemu_monitor(tmp_path) as (sock, _):
        yield sock


def test_pause_resume_and_errors_from_worker_threads(monitor: str) -> None:
    def session() -> list[bool]:
        qmp = Qmp(monitor, 10)
        try:
            states = [qmp.running(10)]
            qmp.stop(10)
            states.append(qmp.running(10))
            qmp.cont(10)
            states.append(qmp.running(10))
            with pytest.raises(HypervisorError, match="no-such-command"):
                qmp.execute("no-such-command", None, 10)
            return states
        finally:
            qmp.close()
            qmp.close()  # a second close is harmless

    with ThreadPoolExecutor(2) as pool:  # two clients at once, each on its own thread and loop
        results = [f.result() for f in [pool.submit(session), pool.submit(session)]]
    assert all(r[1] is False and r[2] is True for r in results)


def test_no_monitor_and_a_silent_monitor(tmp_path: Path) -> None:
    with pytest.raises(HypervisorError, match="cannot connect"):
        Qmp(str(tmp_path / "absent.sock"), 1)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)
    try:
        with pytest.raises(OperationTimeout):
            Qmp(str(tmp_path / "silent.sock"), 0.5)  # accepted, never greeted
    finally:
        silent.close()
