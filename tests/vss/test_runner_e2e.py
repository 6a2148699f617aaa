"""End to end with a real guest under TCG: `vhdtool run --agent` of an image whose guest runs
qemu-ga and keeps appending to /data, snapshotted through the runner plugin.

One boot for the module: the quiesced snapshot, then two faults on the same guest — a freeze
that misses its deadline, and the coordinator killed with -9 in the middle of a freeze (the
watchdog thaws). Each fault must leave the guest thawed, running and ticking, and no new layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, wait_until
from tests.vss.guest import VHDTOOL, RunningGuest, booted_guest, kill_snapshot_mid_freeze
from vhdtool.vss.plugin import FreezeState, RunState
from vhdtool.vss.plugins.runner import RunnerHypervisor
from vhdtool.vss.qga import GuestAgent

pytestmark = pytest.mark.boot  # a broken 'vhdtool run' fails these tests; it never skips them


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGuest]:
    folder = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "VHDTOOL_SNAPSHOT_DIR": str(folder / "records")}
    with booted_guest(folder, env) as running:
        yield running


def snapshot(guest: RunningGuest, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VHDTOOL, "snapshot", "create", "--guest", guest.name, *args], capture_output=True, text=True, env=guest.env
    )


def plugin(guest: RunningGuest) -> RunnerHypervisor:
    return RunnerHypervisor({"state": guest.env["VHDTOOL_STATE_DIR"]})


def guest_state(guest: RunningGuest) -> tuple[RunState, FreezeState, dict[str, str]]:
    with plugin(guest) as hv:
        st = hv.status(guest.name, 30)
    return st.run, st.freeze, st.active_layers


def layers(guest: RunningGuest) -> set[str]:
    return {p.name for p in guest.disk.parent.glob("*.vhd")}


def agent_exec(guest: RunningGuest, *argv: str) -> None:
    """Run busybox ARGV in the guest through its agent (used to arm the slow freeze hook)."""
    with plugin(guest) as hv:
        path = hv._entry(guest.name).agent
    assert path
    agent = GuestAgent(path, 30)
    try:
        pid = agent.call("guest-exec", {"path": "/bin/busybox", "arg": list(argv)}, 30)["pid"]  # type: ignore[index]
        for _ in range(100):
            if agent.call("guest-exec-status", {"pid": pid}, 30)["exited"]:  # type: ignore[index]
                return
            time.sleep(0.1)
    finally:
        agent.close()


def assert_thawed_running_ticking(guest: RunningGuest, expected_layers: set[str]) -> None:
    end = time.monotonic() + 60
    while True:  # the watchdog or the queued thaw may still be at work
        try:
            state = guest_state(guest)
        except Exception:
            state = None
        if state and state[:2] == (RunState.RUNNING, FreezeState.THAWED):
            break
        assert time.monotonic() < end, f"guest not thawed and running: {state}"
        time.sleep(0.5)
    before = guest.ticks()
    assert guest.wait_ticks(before + 2), "guest stopped ticking"
    assert layers(guest) == expected_layers


def test_quiesced_snapshot_is_a_clean_point_in_time(guest: RunningGuest, tmp_path: Path) -> None:
    done = snapshot(guest, "--quiesce", "required", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    (g,) = doc["guests"]
    assert g["quiesced"] is True and doc["consistent"] is True
    (d,) = g["disks"]
    assert os.path.samefile(d["snapshot"], guest.disk)
    before = guest.ticks()
    pit = tmp_path / "pit.raw"
    converted = subprocess.run([*VHDTOOL, "convert", "-O", "raw", d["snapshot"], pit], capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr
    fsck = subprocess.run([need("e2fsck"), "-fn", pit], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    data = subprocess.run([need("debugfs"), "-R", "cat /data", pit], capture_output=True, text=True).stdout
    assert data.count("tick") >= 3
    assert guest.wait_ticks(before + 3), "guest stopped ticking after the snapshot"
    run, freeze, active = guest_state(guest)
    assert (run, freeze) == (RunState.RUNNING, FreezeState.THAWED)
    assert active == {d["id"]: d["active"]}  # the guest writes into the new layer
    # in use by the guest's writer: a plain read is refused (the shared lock), a forced share reads
    with pytest.raises(vhdtool.VhdError, match="open for writing by another process"):
        vhdtool.open(d["active"])
    with vhdtool.open(d["active"], share=True) as chain:  # and no stale-parent warning
        assert chain.all_warnings() == []
        assert os.path.samefile(chain.parent.path, d["snapshot"])


def test_freeze_past_its_deadline_thaws_and_leaves_no_layer(guest: RunningGuest) -> None:
    kept = layers(guest)
    agent_exec(guest, "touch", "/slow")
    try:
        done = snapshot(guest, "--quiesce", "required", "--freeze-timeout", "1")
    finally:
        agent_exec(guest, "rm", "-f", "/slow")
    assert done.returncode == 1 and "no freeze within" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert_thawed_running_ticking(guest, kept)


def test_coordinator_killed_mid_freeze_is_rescued_by_the_watchdog(guest: RunningGuest) -> None:
    kept = layers(guest)
    records = Path(guest.env["VHDTOOL_SNAPSHOT_DIR"])
    agent_exec(guest, "touch", "/slow")
    try:
        earlier = kill_snapshot_mid_freeze(["--guest", guest.name], guest.env)
        # the agent takes one client at a time: touch it only once the watchdog is done
        assert_thawed_running_ticking(guest, kept)
    finally:
        agent_exec(guest, "rm", "-f", "/slow")
    assert wait_until(lambda: set(records.glob("*.json")) == earlier, 30, 0.2), "the watchdog left the group's record"
