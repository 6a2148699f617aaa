"""The coordinator's side of the layer switch: a server that cannot be reached is a hypervisor
error, one that does not answer in time is a timeout (the coordinator tells them apart)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vhdtool.vss import control
from vhdtool.vss.plugin import HypervisorError, OperationTimeout


def test_a_missing_endpoint_is_a_hypervisor_error(tmp_path: Path) -> None:
    with pytest.raises(HypervisorError, match="layer control") as caught:
        control.call(str(tmp_path / "gone.sock"), {"op": "layers"}, 2)
    assert not isinstance(caught.value, OperationTimeout)


def test_a_silent_endpoint_is_a_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)  # accepts (in the backlog) and never answers
        with pytest.raises(OperationTimeout, match="no answer within"):
            control.call(path, {"op": "layers"}, 0.2)
