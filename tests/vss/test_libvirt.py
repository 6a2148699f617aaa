"""The libvirt plugin against libvirt's own test driver (``test:///default``), in-process because
that driver's domains live inside the connecting process.

The test driver implements freeze, thaw, suspend, resume and the agent's fsinfo, but no external
snapshots: a group switch fails there, so these tests drive the real roll-back through libvirt —
and check with the driver's own thaw count (0 = nothing left frozen) that every guest was thawed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import libvirt  # noqa: F401 - a missing binding is a failed setup (fixtures/setup.sh installs it)
import pytest

import vhdtool
from tests.helpers import VHDTOOL
from vhdtool.vss.coordinator import Quiesce, SnapshotError, SnapshotOptions, create_snapshot
from vhdtool.vss.plugin import Disk, HypervisorError, RunState
from vhdtool.vss.plugins.libvirt import LibvirtHypervisor

DOMAIN = """<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='vpc'/><source file='{disk}'/><target dev='vda'/></disk>
</devices></domain>"""


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[LibvirtHypervisor]:
    plugin = LibvirtHypervisor({"uri": "test:///default"})
    for name in ("web", "db"):
        disk = tmp_path / f"{name}.vhd"
        vhdtool.create(disk, size=8 << 20)
        plugin.conn.createXML(DOMAIN.format(name=name, disk=disk), 0)
    yield plugin
    for dom in plugin.conn.listAllDomains():  # test:///default is one state per process
        if dom.name() != "test":
            dom.destroy()
    plugin.close()


def test_lists_guests_and_their_vhd_disks(hv: LibvirtHypervisor, tmp_path: Path) -> None:
    assert {"web", "db", "test"} <= {g.name for g in hv.list_guests()}
    (disk,) = hv.list_disks("web")
    assert (disk.id, disk.path, disk.layerable) == ("vda", str(tmp_path / "web.vhd"), True)
    assert hv.probe_agent("web", 1)
    st = hv.status("web", 1)
    assert st.run is RunState.RUNNING and st.active_layers == {"vda": disk.path}
    assert hv.layer_path("web", disk, "G").endswith("/web.vhd.G.qcow2")
    # a snapshot of an overlay names its own after the disk again, not web.vhd.<g1>.<g2>.qcow2
    first = hv.layer_path("web", disk, "20261203T102210Z-eb40")
    second = hv.layer_path("web", Disk("vda", first), "20261203T102215Z-b8e9")
    assert os.path.basename(second) == "web.vhd.20261203T102215Z-b8e9.qcow2"


def test_freeze_thaw_pause_resume(hv: LibvirtHypervisor) -> None:
    dom = hv.conn.lookupByName("db")
    assert hv.freeze("db", 5) > 0
    hv.thaw("db", 5)
    hv.thaw("db", 5)  # idempotent
    assert dom.fsThaw() == 0
    hv.pause("db", 5)
    assert hv.status("db", 1).run is RunState.PAUSED
    hv.resume("db", 5)
    hv.resume("db", 5)  # idempotent
    assert hv.status("db", 1).run is RunState.RUNNING


@pytest.mark.parametrize("quiesce", [Quiesce.REQUIRED, Quiesce.OFF])
def test_failed_switch_rolls_the_group_back(hv: LibvirtHypervisor, tmp_path: Path, quiesce: Quiesce) -> None:
    opts = SnapshotOptions(guests=["web", "db"], quiesce=quiesce, freeze_timeout=10, hold_timeout=10)
    with pytest.raises(SnapshotError, match="external snapshot") as info:
        create_snapshot(hv, opts, catalogue_dir=str(tmp_path / "records"))
    report = info.value.report
    assert not report.consistent and all(g.disks == [] for g in report.guests)
    for name in ("web", "db"):
        assert hv.conn.lookupByName(name).fsThaw() == 0  # nothing left frozen
        assert hv.status(name, 1).run is RunState.RUNNING
    assert sorted(p.name for p in tmp_path.glob("*.*")) == ["db.vhd", "web.vhd"]  # no overlay left
    assert not list((tmp_path / "records").iterdir())


def test_differencing_vhd_disk_is_refused_before_any_freeze(hv: LibvirtHypervisor, tmp_path: Path) -> None:
    child = tmp_path / "child.vhd"
    vhdtool.create(child, parent=tmp_path / "web.vhd")
    hv.conn.createXML(DOMAIN.format(name="diff", disk=child), 0)
    assert hv.list_disks("diff")[0].layerable is False
    with pytest.raises(HypervisorError, match="cannot take a snapshot layer"):
        create_snapshot(hv, SnapshotOptions(guests=["diff"]), catalogue_dir=str(tmp_path / "records"))
    assert hv.conn.lookupByName("diff").fsThaw() == 0


NBD_DOMAIN = """<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os><devices>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd'>
<host transport='unix' socket='{socket}'/></source><target dev='vda'/></disk></devices></domain>"""


def test_nbd_disks_are_layered_only_when_vhdtool_serves_them(
    hv: LibvirtHypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.setenv("VHDTOOL_STATE_DIR", str(tmp_path / "state"))
    served, stranger = tmp_path / "served.sock", tmp_path / "stranger.sock"
    hv.conn.createXML(NBD_DOMAIN.format(name="nbd-served", socket=served), 0)
    hv.conn.createXML(NBD_DOMAIN.format(name="nbd-other", socket=stranger), 0)
    (other,) = hv.list_disks("nbd-other")
    assert not other.layerable and "not served by vhdtool" in other.path
    server = subprocess.Popen([*VHDTOOL, "serve", tmp_path / "web.vhd", "--socket", served],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline()  # listening, registered
        (disk,) = hv.list_disks("nbd-served")
        assert disk.layerable and disk.path == str(tmp_path / "web.vhd")
        assert hv.layer_path("nbd-served", disk, "G").endswith("/web.vhd.G.vhd")  # a VHD layer, not qcow2
        assert hv.status("nbd-served", 1).active_layers == {"vda": disk.path}
    finally:
        server.terminate()
        server.wait()
