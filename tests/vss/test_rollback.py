"""The one roll-back over the simulated hypervisor's real VHD layers: a disk on its new layer is
switched back and the layer deleted; a layer whose disk cannot be told, could not be switched
back, or is named in doubt is kept; every guest is released, and one that is not is reported."""

from __future__ import annotations

import os
from pathlib import Path

from vhdtool.vss.plugin import FreezeState, RunState
from vhdtool.vss.plugins.simulated import SimulatedHypervisor
from vhdtool.vss.rollback import NewLayer, roll_back

GROUP = "20261203T102210Z-eb40"


def layered(hv: SimulatedHypervisor) -> list[NewLayer]:
    """A new layer for every guest's disk; every disk but sim-3's switched to it."""
    made = []
    for guest in ("sim-0", "sim-1", "sim-2", "sim-3"):
        (disk,) = hv.list_disks(guest)
        layer = hv.new_layer(guest, disk, hv.layer_path(guest, disk, GROUP))
        hv.freeze(guest, 5)
        if guest != "sim-3":
            hv.switch_disk(guest, disk, layer, 5)
        made.append(NewLayer(guest, disk, layer))
    return made


def test_roll_back_switches_back_releases_and_keeps_only_layers_in_use(tmp_path: Path) -> None:
    layers = layered(SimulatedHypervisor({"dir": str(tmp_path)}))
    hv = SimulatedHypervisor({"dir": str(tmp_path), "fail": "2:switch"})  # the same guests, read again
    unknown = {"sim-1"}  # as if the hypervisor could not say where its disk writes

    def writes_to_new(nl: NewLayer) -> bool | None:
        if nl.guest in unknown:
            return None
        return hv.status(nl.guest, 5).active_layers[nl.disk.id] == nl.layer

    done = roll_back(
        layers,
        ["sim-0", "sim-1", "sim-2", "sim-3"],
        writes_to_new=writes_to_new,
        switch_back=lambda nl: hv.switch_disk(nl.guest, nl.disk, nl.disk.path, 5),
        release=lambda guest: hv.thaw(guest, 5),
        timeout=10,
    )
    assert done.kept == {("sim-1", "disk0"), ("sim-2", "disk0")} and done.stuck == {}
    by_guest = {nl.guest: nl for nl in layers}
    assert hv.status("sim-0", 5).active_layers["disk0"] == by_guest["sim-0"].disk.path  # switched back
    assert not os.path.exists(by_guest["sim-0"].layer) and not os.path.exists(by_guest["sim-3"].layer)
    assert os.path.exists(by_guest["sim-1"].layer) and os.path.exists(by_guest["sim-2"].layer)
    for guest in by_guest:
        assert (hv.status(guest, 5).run, hv.status(guest, 5).freeze) == (RunState.RUNNING, FreezeState.THAWED)
    hv.close()


def test_a_layer_in_doubt_is_kept_and_a_guest_not_released_is_reported(tmp_path: Path) -> None:
    layers = layered(SimulatedHypervisor({"dir": str(tmp_path)}))
    hv = SimulatedHypervisor({"dir": str(tmp_path), "fail": "0:thaw"})
    done = roll_back(
        layers,
        ["sim-0", "sim-1"],
        writes_to_new=lambda nl: False,
        switch_back=lambda nl: hv.switch_disk(nl.guest, nl.disk, nl.disk.path, 5),
        release=lambda guest: hv.thaw(guest, 5),
        timeout=10,
        in_doubt=lambda: {("sim-3", "disk0")},
    )
    assert done.kept == {("sim-3", "disk0")}
    assert list(done.stuck) == ["sim-0"] and "simulated fault" in done.stuck["sim-0"]
    assert [os.path.exists(nl.layer) for nl in layers] == [False, False, False, True]
    hv.close()
