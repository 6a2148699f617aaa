"""The libvirt plugin against a real libvirtd running TCG guests with qemu-ga (tests/vss/libvirtd.py).

Three domains boot once for the module, side by side: ``file`` (a raw file disk, agent), ``bare``
(a raw file disk, no agent channel) and ``nbd`` (a VHD that `vhdtool serve` feeds over a unix
socket, agent). Each test leaves its domains thawed, running and ticking, so the next one starts
from a guest in the same condition, whatever layers earlier snapshots added below it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import need, wait_until
from tests.vss.guest import VHDTOOL, booted_guest, build_image, kill_snapshot_mid_freeze
from tests.vss.libvirtd import Domain, booted, file_disk, nbd_disk, running_libvirtd, session_tag
from vhdtool.nbd import served
from vhdtool.vss import control

pytestmark = pytest.mark.boot


@dataclass
class Lab:
    uri: str
    folder: Path
    env: dict[str, str]
    file: Domain
    bare: Domain
    nbd: Domain

    def snapshot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VHDTOOL, "snapshot", "create", *args], capture_output=True, text=True, env=self.env,
                              timeout=300)  # fmt: skip

    def libvirt(self, domain: Domain, *args: str) -> subprocess.CompletedProcess[str]:
        return self.snapshot("--hypervisor", "libvirt", "--hypervisor-opt", f"uri={self.uri}", "--guest", domain.name,
                             *args)  # fmt: skip

    def served_layer(self) -> str:
        server = served.find(str(self.folder / "nbd.sock"))
        assert server is not None
        return str(control.call(server.control, {"op": "layers"}, 10)["layers"][""])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("libvirt")
    folder.chmod(0o755)
    env = {**os.environ, "VHDTOOL_STATE_DIR": str(folder / "state"), "VHDTOOL_SNAPSHOT_DIR": str(folder / "records")}
    vhd = build_image(folder)
    raw = folder / "g.raw"
    subprocess.run([*VHDTOOL, "convert", "-O", "raw", vhd, raw], check=True, capture_output=True)
    bare_raw = folder / "bare.raw"
    subprocess.run(["cp", "--sparse=always", raw, bare_raw], check=True)
    tag = session_tag()
    with pytest.MonkeyPatch.context() as mp, running_libvirtd(folder) as uri:
        mp.setenv("VHDTOOL_STATE_DIR", env["VHDTOOL_STATE_DIR"])  # served.find here reads it
        server = subprocess.Popen([*VHDTOOL, "serve", vhd, "--socket", folder / "nbd.sock", "--socket-mode", "0660"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)  # fmt: skip
        try:
            end = time.monotonic() + 30
            while not (folder / "nbd.sock").exists() or served.find(str(folder / "nbd.sock")) is None:
                assert server.poll() is None and time.monotonic() < end, "vhdtool serve did not start"
                time.sleep(0.1)
            with (
                booted(uri, f"{tag}-file", file_disk(raw), folder) as file,
                booted(uri, f"{tag}-bare", file_disk(bare_raw), folder, agent=False) as bare,
                booted(uri, f"{tag}-nbd", nbd_disk(folder / "nbd.sock"), folder) as nbd,
            ):
                for d in (file, bare, nbd):
                    assert d.wait_ticks(3), f"{d.name} did not start ticking: {d.console.read_text()[-500:]}"
                yield Lab(uri, folder, env, file, bare, nbd)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)


def assert_thawed_and_ticking(d: Domain) -> None:
    end = time.monotonic() + 60
    while True:  # a queued thaw or the watchdog may still be at work
        try:
            state = d.freeze_status()
        except Exception as e:  # the agent is busy with a command libvirt has queued
            state = str(e)
        if state == "thawed":
            break
        assert time.monotonic() < end, f"{d.name} not thawed: {state}"
        time.sleep(0.5)
    import libvirt

    assert d.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    before = d.ticks()
    assert d.wait_ticks(before + 2, 60), f"{d.name} stopped ticking"


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix in (".vhd", ".qcow2", ".raw")}


def test_quiesced_external_snapshot_of_a_file_disk(lab: Lab, tmp_path: Path) -> None:
    done = lab.libvirt(lab.file, "--quiesce", "required", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    (g,) = doc["guests"]
    assert doc["consistent"] and g["quiesced"] and g["mode"] == "freeze" and g["hypervisor"] == "libvirt"
    (d,) = g["disks"]
    assert d["active"].endswith(".qcow2") and lab.file.disk_source() == d["active"]
    info = json.loads(subprocess.run([need("qemu-img"), "info", "-U", "--output=json", d["active"]],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and os.path.samefile(info["full-backing-filename"], d["snapshot"])
    pit = tmp_path / "pit.raw"
    subprocess.run(["cp", "--sparse=always", d["snapshot"], pit], check=True)
    fsck = subprocess.run([need("e2fsck"), "-fn", pit], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout  # quiesced: clean without a journal replay
    assert "tick" in subprocess.run([need("debugfs"), "-R", "cat /data", pit], capture_output=True, text=True).stdout
    assert_thawed_and_ticking(lab.file)


def test_freeze_past_its_deadline_thaws_and_leaves_no_layer(lab: Lab) -> None:
    kept, source = files(lab.folder), lab.file.disk_source()
    lab.file.run("touch", "/slow")  # the guest's freeze hook sleeps 5 s
    try:
        done = lab.libvirt(lab.file, "--quiesce", "required", "--freeze-timeout", "1")
    finally:
        assert_thawed_and_ticking(lab.file)
        lab.file.run("rm", "-f", "/slow")
    assert done.returncode == 1 and "no freeze within --freeze-timeout 1s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert files(lab.folder) == kept and lab.file.disk_source() == source


@pytest.mark.parametrize("quiesce", ["required", "preferred", "off"])
def test_a_guest_without_agent(lab: Lab, quiesce: str) -> None:
    kept, source = files(lab.folder), lab.bare.disk_source()
    done = lab.libvirt(lab.bare, "--quiesce", quiesce, "--json")
    doc = json.loads(done.stdout)
    (g,) = doc["guests"]
    if quiesce == "required":  # refused before any guest is touched
        assert done.returncode == 1 and "cannot be quiesced" in done.stderr, done.stderr
        assert g["mode"] == "none" and files(lab.folder) == kept and lab.bare.disk_source() == source
    else:  # paused for a crash-consistent point in time, resumed after
        assert done.returncode == 0, done.stderr
        assert not doc["consistent"] and g["mode"] == "pause" and not g["quiesced"]
        assert lab.bare.disk_source() == g["disks"][0]["active"]
        assert ("guest agent" in g.get("note", "")) == (quiesce == "preferred")
    assert "Traceback" not in done.stderr
    import libvirt

    assert lab.bare.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    before = lab.bare.ticks()
    assert lab.bare.wait_ticks(before + 2, 60)


def failing_partner(lab: Lab) -> list[str]:
    """A simulated guest whose layer switch fails after the libvirt guest's has finished: the
    group must roll back a switch libvirt really made."""
    sim = lab.folder / "sim"
    return ["--guest", "simulated:sim-0", "--hypervisor-opt", "simulated:guests=1",
            "--hypervisor-opt", "simulated:switch_ms=1500", "--hypervisor-opt", "simulated:fail=0:switch",
            "--hypervisor-opt", f"simulated:dir={sim}"]  # fmt: skip


def test_roll_back_commits_the_overlay_back(lab: Lab) -> None:
    kept, source = files(lab.folder), lab.file.disk_source()
    done = lab.snapshot("--guest", f"libvirt:{lab.file.name}", "--hypervisor-opt", f"libvirt:uri={lab.uri}",
                        *failing_partner(lab), "--quiesce", "required", "--json")  # fmt: skip
    assert done.returncode == 1 and "sim-0: switching the write layer failed" in done.stderr, done.stderr
    doc = json.loads(done.stdout)
    assert doc["hypervisor"] == "mixed" and all(g["disks"] == [] and not g.get("error") for g in doc["guests"])
    # active block commit + pivot: the domain writes to its old top again, the overlay is gone
    assert lab.file.disk_source() == source and files(lab.folder) == kept
    assert_thawed_and_ticking(lab.file)


@pytest.mark.parametrize("which", ["file", "nbd"])
def test_watchdog_thaws_after_the_coordinator_is_killed(lab: Lab, which: str) -> None:
    """kill -9 in the middle of the freeze: the watchdog thaws the guest through libvirt and
    removes the new layer (a served disk's VHD already exists then; a qcow2 overlay does not)."""
    domain: Domain = getattr(lab, which)
    kept, source = files(lab.folder), domain.disk_source()
    served_before = lab.served_layer()
    records = Path(lab.env["VHDTOOL_SNAPSHOT_DIR"])
    domain.run("touch", "/slow")
    try:
        earlier = kill_snapshot_mid_freeze(
            ["--hypervisor", "libvirt", "--hypervisor-opt", f"uri={lab.uri}", "--guest", domain.name], lab.env
        )
        assert_thawed_and_ticking(domain)
    finally:
        domain.run("rm", "-f", "/slow")
    wait_until(lambda: set(records.glob("*.json")) == earlier and files(lab.folder) == kept, 60, 0.2)
    assert set(records.glob("*.json")) == earlier, "the watchdog left the group's record"
    assert files(lab.folder) == kept and domain.disk_source() == source and lab.served_layer() == served_before


def test_vhd_native_snapshot_of_a_disk_vhdtool_serves(lab: Lab, tmp_path: Path) -> None:
    before = lab.served_layer()
    done = lab.libvirt(lab.nbd, "--quiesce", "required", "--json")
    assert done.returncode == 0, done.stderr
    (g,) = json.loads(done.stdout)["guests"]
    (d,) = g["disks"]
    assert g["quiesced"] and os.path.samefile(d["snapshot"], before)
    assert d["active"].endswith(".vhd") and lab.served_layer() == d["active"]
    assert lab.nbd.disk_source() == str(lab.folder / "nbd.sock")  # libvirt and QEMU saw no change
    info = json.loads(subprocess.run([*VHDTOOL, "info", "--json", d["active"]], capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip
    assert "differencing" in json.dumps(info).lower()
    pit = tmp_path / "pit.raw"
    subprocess.run([*VHDTOOL, "convert", "-O", "raw", d["snapshot"], pit], check=True, capture_output=True)
    fsck = subprocess.run([need("e2fsck"), "-fn", pit], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    assert_thawed_and_ticking(lab.nbd)


def test_served_disk_rolls_back_through_its_server(lab: Lab) -> None:
    kept, before = files(lab.folder), lab.served_layer()
    done = lab.snapshot("--guest", f"libvirt:{lab.nbd.name}", "--hypervisor-opt", f"libvirt:uri={lab.uri}",
                        *failing_partner(lab), "--quiesce", "required")  # fmt: skip
    assert done.returncode == 1 and "switching the write layer failed" in done.stderr, done.stderr
    assert lab.served_layer() == before and files(lab.folder) == kept
    assert_thawed_and_ticking(lab.nbd)


def test_one_group_over_two_connections(lab: Lab) -> None:
    second = "qemu+unix:///system"
    done = lab.snapshot("--hypervisor", "libvirt", "--hypervisor-opt", f"uri={lab.uri}",
                        "--hypervisor-opt", f"uri={second}", "--guest", f"{lab.file.name}@{lab.uri}",
                        "--guest", f"{lab.nbd.name}@{second}", "--quiesce", "required", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["consistent"] and doc["freeze_window_ms"] > 0
    assert {g["name"] for g in doc["guests"]} == {f"{lab.file.name}@{lab.uri}", f"{lab.nbd.name}@{second}"}
    assert lab.file.disk_source().endswith(".qcow2") and lab.served_layer().endswith(".vhd")
    for d in (lab.file, lab.nbd):
        assert_thawed_and_ticking(d)


def test_one_group_over_the_runner_and_libvirt(lab: Lab) -> None:
    with booted_guest(lab.folder / "run", lab.env, name=f"{session_tag()}-run") as runner:
        state = runner.env["VHDTOOL_STATE_DIR"]
        done = lab.snapshot("--guest", f"runner:{runner.name}", "--guest", f"libvirt:{lab.nbd.name}",
                            "--hypervisor-opt", f"runner:state={state}", "--hypervisor-opt", f"libvirt:uri={lab.uri}",
                            "--quiesce", "required", "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        shown = {(g["hypervisor"], g["name"]): g for g in doc["guests"]}
        assert set(shown) == {("runner", runner.name), ("libvirt", lab.nbd.name)}
        assert doc["consistent"] and all(g["disks"][0]["active"].endswith(".vhd") for g in shown.values())
        assert lab.served_layer() == shown["libvirt", lab.nbd.name]["disks"][0]["active"]
        before = runner.ticks()
        assert runner.wait_ticks(before + 2), "the runner guest stopped ticking"
    assert_thawed_and_ticking(lab.nbd)


def test_bare_name_with_two_connections_is_refused(lab: Lab) -> None:
    done = lab.snapshot("--hypervisor", "libvirt", "--hypervisor-opt", f"uri={lab.uri}",
                        "--hypervisor-opt", "uri=qemu+unix:///system", "--guest", lab.file.name)  # fmt: skip
    assert done.returncode == 64 and f"no guest named {lab.file.name!r}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
