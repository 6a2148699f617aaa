"""One group over guests of several plugins (``--guest PLUGIN:NAME``), without a real hypervisor:
simulated guests kept in a folder (so another process sees their state) beside libvirt's
in-process test driver. The real mixed groups (runner + libvirt, two libvirt connections) are in
test_libvirt_qemu.py and the acceptance script."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import VHDTOOL, assert_clean_error, wait_until
from tests.helpers import vhdtool as run_vhdtool
from vhdtool.errors import UsageError
from vhdtool.vss.mixed import plan_group
from vhdtool.vss.plugin import FreezeState, RunState
from vhdtool.vss.plugins.simulated import SimulatedHypervisor


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VHDTOOL_SNAPSHOT_DIR", str(tmp_path / "records"))
    return tmp_path


def group(folder: Path, *sim_opts: str) -> list[str]:
    args = ["snapshot", "create", "--guest", "simulated:sim-0", "--guest", "simulated:sim-1", "--guest", "libvirt:test",
            "--hypervisor-opt", "libvirt:uri=test:///default"]  # fmt: skip
    for o in (f"dir={folder / 'sim'}", "guests=2", *sim_opts):
        args += ["--hypervisor-opt", f"simulated:{o}"]
    return args


def sim_states(folder: Path) -> list[tuple[RunState, FreezeState, str]]:
    with SimulatedHypervisor({"dir": str(folder / "sim"), "guests": "2"}) as hv:
        return [(s.run, s.freeze, s.active_layers["disk0"]) for s in (hv.status(f"sim-{i}", 1) for i in range(2))]


def untouched(folder: Path) -> list[tuple[RunState, FreezeState, str]]:
    return [(RunState.RUNNING, FreezeState.THAWED, str(folder / "sim" / f"sim-{i}.vhd")) for i in range(2)]


def test_plugin_prefixes_pick_guests_and_options() -> None:
    plugin, options, names = plan_group("runner", ["runner:web", "libvirt:db"], ["libvirt:uri=qemu:///system",
                                                                                      "state=/s"])  # fmt: skip
    assert (plugin, names) == ("mixed", ["runner:web", "libvirt:db"])
    assert {p: json.loads(o) for p, o in options.items()} == {"runner": {"state": "/s"},
                                                             "libvirt": {"uri": "qemu:///system"}}  # fmt: skip
    # one plugin, named on every guest: that plugin itself, bare names
    assert plan_group("runner", ["simulated:sim-0"], ["simulated:guests=2"]) == ("simulated", {"guests": "2"},
                                                                                     ["sim-0"])  # fmt: skip
    # a colon that names no plugin is part of the guest's name
    assert plan_group("libvirt", ["db@qemu:///system"], []) == ("libvirt", {}, ["db@qemu:///system"])
    with pytest.raises(UsageError, match="no guest of the group runs on libvirt"):
        plan_group("runner", ["web"], ["libvirt:uri=x"])


def test_a_failure_in_one_plugin_rolls_back_the_other(env: Path) -> None:
    """libvirt's test driver makes no external snapshots: its switch fails once the simulated
    guests' switches are done, and those are undone — one roll-back for the whole group."""
    done = run_vhdtool(*group(env), "--quiesce", "required", "--json")
    assert done.returncode == 1 and "libvirt:test: switching the write layer failed" in done.stderr, done.stderr
    doc = json.loads(done.stdout)
    assert doc["hypervisor"] == "mixed" and not doc["consistent"]
    shown = {(g["hypervisor"], g["name"]): g for g in doc["guests"]}
    assert set(shown) == {("simulated", "sim-0"), ("simulated", "sim-1"), ("libvirt", "test")}
    assert all(g["disks"] == [] for g in shown.values())
    assert sim_states(env) == untouched(env)
    assert sorted(p.name for p in (env / "sim").glob("*.vhd")) == ["sim-0.vhd", "sim-1.vhd"]
    table = run_vhdtool(*group(env), "--quiesce", "required")
    assert table.returncode == 1 and "simulated:sim-0" in table.stdout and "libvirt:test" in table.stdout


def test_watchdog_rescues_a_mixed_group(env: Path) -> None:
    """libvirt's test driver dies with the coordinator (nothing to thaw there); the simulated
    guests outlive it and are thawed by the watchdog, which rebuilds the group's plugins."""
    cmd = [*VHDTOOL, *group(env, "hang=0:freeze"), "--freeze-timeout", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: sim_states(env)[1][1] is FreezeState.FROZEN), "sim-1 never froze"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until(lambda: sim_states(env) == untouched(env)), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: len(list((env / "sim").glob("*.vhd"))) == 2 and not list((env / "records").glob("*")))


def test_bad_mixed_requests_are_usage_errors(env: Path) -> None:
    stray = run_vhdtool("snapshot", "create", "--guest", "simulated:sim-0", "--hypervisor-opt", "libvirt:uri=x")
    assert_clean_error(stray, 64)
    assert "no guest of the group runs on libvirt" in stray.stderr
    typo = run_vhdtool(*group(env, "typo=1"))
    assert_clean_error(typo, 64)
    assert "typo" in typo.stderr
    missing = run_vhdtool("snapshot", "create", "--guest", "simulated:sim-9", "--guest", "libvirt:test",
                          "--hypervisor-opt", "libvirt:uri=test:///default")  # fmt: skip
    assert_clean_error(missing, 64)
    assert "simulated:sim-9" in missing.stderr
