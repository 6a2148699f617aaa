"""`vhdtool ps`: the running guests, from the state folder, with where each disk writes now."""

from __future__ import annotations

import time
from typing import Any

from vhdtool.errors import VhdError
from vhdtool.run import state

LAYERS_TIMEOUT = 2.0


def _active_layers(entry: state.Entry) -> dict[str, str]:
    """Ask the runner where each disk writes now (a snapshot may have added layers); an entry's
    images when it does not answer in time."""
    from vhdtool.nbd.layercontrol import call

    try:
        return {str(k): str(v) for k, v in call(entry.control, {"op": "layers"}, LAYERS_TIMEOUT)["layers"].items()}
    except (VhdError, ValueError, KeyError):
        return {}


def running_guests() -> list[dict[str, Any]]:
    """One document per running guest: the state entry plus ``uptime`` and each disk's ``active``."""
    found = []
    for entry in state.entries():
        doc = dict(entry.doc)
        layers = _active_layers(entry)
        doc["uptime"] = round(time.time() - float(doc.get("started", time.time())), 1)
        doc["disks"] = [{**d, "active": layers.get(str(d.get("export")), d.get("image"))} for d in entry.disks]
        found.append(doc)
    return found
