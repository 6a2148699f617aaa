"""The coordinator through the CLI with the simulated hypervisor: JSON shape, real differencing
layers, and every fault path leaving each guest thawed and running with no new layer behind.

Guests live in a folder (``dir=``), so this test — another process — reads their state as the
coordinator left it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, assert_clean_error, wait_until
from tests.helpers import vhdtool as run_vhdtool
from vhdtool.vss.plugin import FreezeState, RunState
from vhdtool.vss.plugins.simulated import SimulatedHypervisor


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VHDTOOL_SNAPSHOT_DIR", str(tmp_path / "records"))
    return tmp_path


def snapshot(folder: Path, guests: int, *opts: str, quiesce: str = "required") -> subprocess.CompletedProcess[str]:
    hv = ["--hypervisor-opt", f"dir={folder / 'sim'}", "--hypervisor-opt", f"guests={guests}"]
    for o in opts:
        hv += ["--hypervisor-opt", o]
    return run_vhdtool("snapshot", "create", "--hypervisor", "simulated", "--all", "--quiesce", quiesce, *hv, "--json")


def sim(folder: Path, guests: int) -> SimulatedHypervisor:
    return SimulatedHypervisor({"dir": str(folder / "sim"), "guests": str(guests)})


def vhd_files(folder: Path) -> set[str]:
    return {p.name for p in (folder / "sim").glob("*.vhd")}


def assert_untouched(folder: Path, guests: int) -> None:
    """Every guest runs thawed on its original disk, and no layer was left behind."""
    with sim(folder, guests) as hv:
        for g in hv.list_guests():
            st = hv.status(g.name, 1)
            assert (st.run, st.freeze) == (RunState.RUNNING, FreezeState.THAWED), (g.name, st)
            assert st.active_layers == {"disk0": str(folder / "sim" / f"{g.name}.vhd")}
    assert vhd_files(folder) == {f"sim-{i}.vhd" for i in range(guests)}
    assert not list((folder / "records").glob("*.json"))


def test_group_snapshot_makes_real_layers_and_records_them(env: Path) -> None:
    with sim(env, 3) as hv, vhdtool.open(hv.list_disks("sim-1")[0].path, writable=True) as disk:
        disk.pwrite(0, b"before" * 100)  # data written before the snapshot
    result = snapshot(env, 3, "freeze_ms=20")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["consistent"] is True and isinstance(doc["freeze_window_ms"], int)
    assert [g["name"] for g in doc["guests"]] == ["sim-0", "sim-1", "sim-2"]
    with sim(env, 3) as hv:
        for g in doc["guests"]:
            assert g["quiesced"] is True
            (d,) = g["disks"]
            assert d["snapshot"] == str(env / "sim" / f"{g['name']}.vhd")
            with vhdtool.open(d["active"]) as layer:
                assert layer.meta.type_name == "differencing"
                assert os.path.samefile(layer.parent.path, d["snapshot"])
            st = hv.status(g["name"], 1)
            assert (st.run, st.freeze) == (RunState.RUNNING, FreezeState.THAWED)
            assert st.active_layers == {"disk0": d["active"]}
    active = doc["guests"][1]["disks"][0]["active"]
    with vhdtool.open(active, writable=True) as layer:  # the guest writes on; the snapshot keeps its past
        assert layer.pread(0, 600) == b"before" * 100
        layer.pwrite(0, b"after!" * 100)
    with vhdtool.open(doc["guests"][1]["disks"][0]["snapshot"]) as pit:
        assert pit.pread(0, 600) == b"before" * 100
    listed = json.loads(run_vhdtool("snapshot", "list", "--json").stdout)
    assert [(r["group"], r["state"]) for r in listed] == [(doc["group"], "complete")]
    # a second snapshot layers on the first, named after the disk, not after the first layer
    again = json.loads(snapshot(env, 3).stdout)
    second = again["guests"][1]["disks"][0]
    assert second["snapshot"] == active
    assert Path(second["active"]).name == f"sim-1.vhd.{again['group']}.vhd"


@pytest.mark.parametrize(
    ("opts", "quiesce", "message"),
    [
        (["fail=1:agent"], "required", "cannot be quiesced"),  # agent missing with required
        (["fail=5:freeze"], "required", "sim-5: freeze failed"),  # one of several fails
        (["hang=2:freeze", "freeze_ms=10"], "required", "no freeze within"),  # one agent times out
        (["freeze_ms=3000"], "required", "no freeze within"),  # every agent too slow
        (["fail=3:switch"], "required", "switching the write layer failed"),
        (["hang=4:switch"], "off", "layer switch not done"),
        (["fail=0:pause"], "off", "sim-0: pause failed"),
    ],
)
def test_fault_leaves_every_guest_thawed_and_no_layer(env: Path, opts: list[str], quiesce: str, message: str) -> None:
    extra = ["--freeze-timeout", "0.5", "--hold-timeout", "0.5"]
    hv = [x for o in [f"dir={env / 'sim'}", "guests=6", *opts] for x in ("--hypervisor-opt", o)]
    result = run_vhdtool("snapshot", "create", "--hypervisor", "simulated", "--all", "--quiesce", quiesce, *extra, *hv)
    assert_clean_error(result, 1)
    assert message in result.stderr
    assert_untouched(env, 6)


def test_json_report_of_a_failed_group(env: Path) -> None:
    result = snapshot(env, 4, "fail=2:freeze")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["consistent"] is False and "sim-2" in doc["error"]
    assert all(g["disks"] == [] and not g["quiesced"] for g in doc["guests"])
    assert "simulated fault" in doc["guests"][2]["error"]


def test_preferred_pauses_guests_without_agent(env: Path) -> None:
    result = snapshot(env, 3, "fail=1:agent", quiesce="preferred")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["consistent"] is False
    assert [(g["quiesced"], g["mode"]) for g in doc["guests"]] == [(True, "freeze"), (False, "pause"), (True, "freeze")]
    assert all(len(g["disks"]) == 1 for g in doc["guests"])
    with sim(env, 3) as hv:
        assert all(hv.status(g, 1).run is RunState.RUNNING for g in ("sim-0", "sim-1", "sim-2"))


def test_preferred_pauses_a_guest_whose_freeze_fails(env: Path) -> None:
    doc = json.loads(snapshot(env, 3, "fail=2:freeze", quiesce="preferred").stdout)
    assert [g["mode"] for g in doc["guests"]] == ["freeze", "freeze", "pause"]
    assert "freeze failed" in doc["guests"][2]["note"]


def states(folder: Path, guests: int) -> list[tuple[RunState, FreezeState]]:
    with sim(folder, guests) as hv:
        return [(s.run, s.freeze) for s in (hv.status(f"sim-{i}", 1) for i in range(guests))]


def test_watchdog_thaws_after_coordinator_is_killed(env: Path) -> None:
    """kill -9 of the coordinator while every guest is frozen: the watchdog process, which the
    kill does not reach, thaws them and removes the new layers."""
    cmd = [*VHDTOOL, "snapshot", "create", "--hypervisor", "simulated", "--all", "--hold-timeout", "120"]
    for o in (f"dir={env / 'sim'}", "guests=4", "switch_ms=60000"):
        cmd += ["--hypervisor-opt", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        frozen = [(RunState.RUNNING, FreezeState.FROZEN)] * 4
        assert wait_until(lambda: states(env, 4) == frozen), "guests never froze"
        assert len(vhd_files(env)) == 8  # the new layers exist while frozen
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        thawed = [(RunState.RUNNING, FreezeState.THAWED)] * 4
        assert wait_until(lambda: states(env, 4) == thawed and len(vhd_files(env)) == 4), proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: not list((env / "records").glob("*.json")))
    assert_untouched(env, 4)


def test_watchdog_takes_over_a_thaw_that_failed(env: Path) -> None:
    """The snapshot stands, the coordinator reports the guest it could not thaw and exits 1; the
    watchdog goes on and thaws it."""
    result = snapshot(env, 3, "fail=2:thaw")
    assert_clean_error(result, 1)
    assert "could not be thawed" in result.stderr
    doc = json.loads(result.stdout)
    assert "sim-2" in doc["watchdog"]
    assert all(len(g["disks"]) == 1 for g in doc["guests"])  # the snapshot itself was taken
    assert wait_until(lambda: states(env, 3) == [(RunState.RUNNING, FreezeState.THAWED)] * 3)


def test_scale_512_guests_in_one_group(tmp_path: Path) -> None:
    result = run_vhdtool(
        "snapshot", "create", "--hypervisor", "simulated", "--all", "--quiesce", "required",
        "--hypervisor-opt", "guests=512", "--hypervisor-opt", "freeze_ms=50", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["guests"]) == 512 and all(g["quiesced"] and len(g["disks"]) == 1 for g in doc["guests"])
    assert len({g["disks"][0]["active"] for g in doc["guests"]}) == 512


def test_discard_returns_the_disk_to_the_point_in_time(env: Path) -> None:
    doc = json.loads(snapshot(env, 2).stdout)
    d = doc["guests"][0]["disks"][0]
    with vhdtool.open(d["active"], writable=True) as layer:
        layer.pwrite(0, b"x" * 512)
        # a running guest holds its layer: discard refuses
        held = run_vhdtool("snapshot", "discard", d["snapshot"])
        assert_clean_error(held, 1)
        assert "locked" in held.stderr
    done = run_vhdtool("snapshot", "discard", d["snapshot"])
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(d["active"])
    with vhdtool.open(d["snapshot"]) as pit:
        assert pit.pread(0, 512) == bytes(512)
    listed = json.loads(run_vhdtool("snapshot", "list", "--json").stdout)
    assert [len(g["disks"]) for g in listed[0]["guests"]] == [0, 1]  # sim-1's layer remains on record
    assert run_vhdtool("snapshot", "discard", doc["group"]).returncode == 0
    assert json.loads(run_vhdtool("snapshot", "list", "--json").stdout) == []


def test_bad_requests_are_one_line_usage_errors(env: Path) -> None:
    assert_clean_error(run_vhdtool("snapshot", "create", "--hypervisor", "nope", "--all"), 64)
    assert_clean_error(run_vhdtool("snapshot", "create", "--hypervisor", "simulated"), 64)
    bad = run_vhdtool("snapshot", "create", "--hypervisor", "simulated", "--all", "--hypervisor-opt", "typo=1")
    assert_clean_error(bad, 64)
    assert "typo" in bad.stderr
    missing = run_vhdtool("snapshot", "create", "--hypervisor", "simulated", "--guest", "sim-9")
    assert_clean_error(missing, 64)
    assert_clean_error(run_vhdtool("snapshot", "merge", "19990101T000000Z-abcd"), 64)
    listed = json.loads(run_vhdtool("snapshot", "hypervisors", "--json").stdout)
    assert {"runner", "libvirt", "simulated"} <= {h["name"] for h in listed}


def test_merge_folds_the_layer_back_into_the_disk(env: Path) -> None:
    doc = json.loads(snapshot(env, 1).stdout)
    d = doc["guests"][0]["disks"][0]
    with vhdtool.open(d["active"], writable=True) as layer:
        layer.pwrite(4096, b"since the snapshot".ljust(512, b"."))
    done = run_vhdtool("snapshot", "merge", doc["group"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"snapshot": d["snapshot"], "layer": d["active"], "action": "merged"}]
    assert not os.path.exists(d["active"])
    with vhdtool.open(d["snapshot"]) as disk:  # the disk, at its original path, has everything
        assert disk.meta.type_name == "dynamic"
        assert disk.pread(4096, 512) == b"since the snapshot".ljust(512, b".")
    assert json.loads(run_vhdtool("snapshot", "list", "--json").stdout) == []
