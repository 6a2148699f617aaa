"""The coordinator's calls to a disk server's layer switch (``vhdtool.nbd.layercontrol``), with
its errors as the plugin interface names them: the coordinator tells a timeout from a refusal."""

from __future__ import annotations

from typing import Any

from vhdtool.nbd import layercontrol
from vhdtool.vss.plugin import HypervisorError, OperationTimeout


def call(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``layercontrol.call``, raising OperationTimeout or HypervisorError."""
    try:
        return layercontrol.call(path, request, timeout)
    except layercontrol.LayerControlTimeout as e:
        raise OperationTimeout(str(e)) from None
    except layercontrol.LayerControlError as e:
        raise HypervisorError(str(e)) from None
