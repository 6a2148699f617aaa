"""Real boots under QEMU (TCG on hosts without real KVM): few, small, each checking several things.

The guest is the project's test kernel and busybox initramfs (fixtures/guest.py); its disks are
VHDs built by `vhdtool build` and served by vhdtool's NBD server. Every test also checks that
nothing is left behind: no QEMU, no state entry, socket or scratch file.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import subprocess
import termios
import time
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import digest
from tests.run.conftest import Env, Guest, build_root_image

pytestmark = pytest.mark.boot

WRITER = (
    "mount -t sysfs sys /sys; echo written-by-guest > /written; sync; "
    'for p in /sys/class/virtio-ports/*; do [ -e "$p/name" ] && echo "PORT-$(cat $p/name)"; done; '
    'echo "DISKS-$(ls /sys/block | tr "\\n" " ")"; echo "NETS-$(ls /sys/class/net | tr "\\n" " ")"; '
    'echo "MARKER-$(cat /hello)"'
)
LOOPER = "echo READY; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"
CONSOLE_READER = (
    "mount -t sysfs sys /sys; for p in /sys/class/virtio-ports/*; do echo PORT-$(cat $p/name); done; "
    'echo READY; read line; echo "$line" > /data; sync; echo "GOT-$line"; while true; do sleep 1; done'
)


def file_in(env: Env, image: Path, path: str) -> str | None:
    got = env.vhdtool("cat", f"{image}:{path}")
    return got.stdout if got.returncode == 0 else None


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"runner exited {proc.returncode}: {path.read_text(errors='replace')[-800:]}"
        assert time.monotonic() < end, f"no {text!r} within {seconds} s: {path.read_text(errors='replace')[-800:]}"
        time.sleep(0.1)


@pytest.fixture
def chain(env: Env) -> tuple[Path, Path]:
    """parent.vhd says 'fromparent' in /hello; its differencing child says 'fromchild'."""
    parent = build_root_image(env, "parent", WRITER, {"hello": "fromparent\n"})
    child = env.tmp / "child.vhd"
    vhdtool.create(child, parent=parent)
    (env.tmp / "hello").write_text("fromchild\n")
    copied = env.vhdtool("cp", env.tmp / "hello", f"{child}:/hello")
    assert copied.returncode == 0, copied.stderr
    return parent, child


def test_a_differencing_child_boots_with_its_own_content_and_keeps_the_writes(
    env: Env, guest: Guest, chain: tuple[Path, Path]
) -> None:
    parent, child = chain
    before = digest(parent)
    done = env.vhdtool("run", child, *env.boot_args(guest), "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "MARKER-fromchild" in done.stdout.splitlines() and "accelerator: " in done.stderr
    assert "guest powered off after" in done.stderr.splitlines()[-1]
    assert "PORT-" not in done.stdout  # no agent channel without --agent
    assert "DISKS-vda " in done.stdout and "NETS-lo " in done.stdout  # --net none by default
    assert digest(parent) == before, "booting the child wrote to its parent"
    assert file_in(env, child, "/written") == "written-by-guest\n"
    assert file_in(env, parent, "/written") is None
    assert env.vhdtool("check", child).returncode == 0
    env.assert_nothing_left()


def test_snapshot_leaves_the_image_byte_identical_and_a_guest_stopping_first_fails_expect(
    env: Env, guest: Guest, chain: tuple[Path, Path]
) -> None:
    parent, child = chain
    before = digest(child), digest(parent)
    done = env.vhdtool(
        "run", child, parent, "--snapshot", "--agent", "--net", "user", *env.boot_args(guest),
        "--expect", "NEVER-PRINTED", "--timeout", "120",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "MARKER-fromchild" in done.stdout
    assert "PORT-org.qemu.guest_agent.0" in done.stdout  # --agent: the channel qemu-ga looks for
    assert "DISKS-vda vdb " in done.stdout and "NETS-eth0 lo " in done.stdout
    lines = done.stderr.splitlines()
    assert "last console lines:" in done.stderr and "Traceback" not in done.stderr
    assert "powered off" in lines[-1] and "without printing 'NEVER-PRINTED'" in lines[-1]
    assert (digest(child), digest(parent)) == before, "--snapshot changed an image"
    env.assert_nothing_left()


def test_a_marker_that_never_comes_times_out_with_the_last_console_lines(env: Env, guest: Guest) -> None:
    image = build_root_image(env, "looper", LOOPER)
    done = env.vhdtool("run", image, *env.boot_args(guest), "--expect", "NEVER", "--timeout", "15")
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("vhdtool: error: no match for 'NEVER' after ") and "(--timeout 15)" in last, last
    assert "last console lines:\n  | " in done.stderr  # what the guest printed last
    assert env.vhdtool("check", image).returncode == 0
    env.assert_nothing_left()


def qmp_status(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        f = s.makefile("rwb")
        assert b"QMP" in f.readline()
        for command in ("qmp_capabilities", "query-status"):
            f.write(json.dumps({"execute": command}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply:
                    break
        return str(reply["return"]["status"])


def test_a_background_guest_is_listed_reached_switched_and_stopped_cleanly(env: Env, guest: Guest) -> None:
    from vhdtool.nbd.layercontrol import call

    image = build_root_image(env, "reader", CONSOLE_READER)
    log = env.tmp / "console.log"
    with open(log, "wb") as out:
        proc = env.popen(
            "run", image, "--name", "bg", "--console", "--agent", "--qmp", env.tmp / "my-qmp.sock",
            *env.boot_args(guest),
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    assert proc.stdin is not None
    try:
        wait_for_text(log, "READY", proc)
        assert "PORT-org.qemu.guest_agent.0" in log.read_text()
        listed = env.vhdtool("ps", "--json")
        assert listed.returncode == 0, listed.stderr
        (entry,) = json.loads(listed.stdout)
        assert entry["name"] == "bg" and entry["pid"] == proc.pid and entry["accel"] in ("tcg", "kvm")
        (disk,) = entry["disks"]
        assert disk["id"] == "vda" and disk["image"] == str(image) and disk["active"] == str(image)
        assert entry["qmp"] == str(env.tmp / "my-qmp.sock")
        assert qmp_status(entry["qmp"]) == "running"  # the public monitor is free for other clients
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(entry["agent"])  # QEMU listens for the guest agent's host side
        taken = env.vhdtool("run", image, "--name", "bg", *env.boot_args(guest))
        assert taken.returncode == 64 and "already running" in taken.stderr
        # a snapshot's layer switch, as the runner plugin does it: later writes go to the layer
        layer = env.tmp / "reader.layer.vhd"
        vhdtool.create(layer, parent=image)
        assert call(entry["control"], {"op": "switch", "export": "vda", "layer": str(layer)}, 30)["ok"]
        assert env.vhdtool("ps", "--json").stdout.count(str(layer)) == 1
        proc.stdin.write(b"typed-on-the-console\n")
        proc.stdin.flush()
        wait_for_text(log, "GOT-typed-on-the-console", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 128 + signal.SIGTERM, log.read_text()[-800:]
    assert "SIGTERM: guest stopped" in log.read_text()
    assert not (env.tmp / "my-qmp.sock").exists()
    assert file_in(env, layer, "/data") == "typed-on-the-console\n"
    assert file_in(env, image, "/data") is None
    for path in (image, layer):
        assert env.vhdtool("check", path).returncode == 0
    env.assert_nothing_left()


def test_a_runner_killed_with_minus_9_takes_its_guest_along(env: Env, guest: Guest) -> None:
    image = build_root_image(env, "killed", LOOPER)
    log = env.tmp / "console.log"
    with open(log, "wb") as out:
        proc = env.popen("run", image, *env.boot_args(guest), stdout=out, stderr=subprocess.STDOUT)
    wait_for_text(log, "guest killed running", proc)
    qemu_pid = json.loads((env.state / "killed.json").read_text())["qemu_pid"]
    proc.kill()
    proc.wait()
    end = time.monotonic() + 30
    while os.path.exists(f"/proc/{qemu_pid}") and time.monotonic() < end:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{qemu_pid}"), "QEMU outlived its runner"
    listed = env.vhdtool("ps", "--json")
    assert json.loads(listed.stdout) == [], listed.stderr  # the stale entry is cleaned on the way
    env.assert_nothing_left()


def test_an_interactive_console_on_a_terminal_passes_ctrl_c_and_stops_at_ctrl_close_bracket(
    env: Env, guest: Guest
) -> None:
    image = build_root_image(env, "tty", LOOPER)
    leader, follower = pty.openpty()
    log = env.tmp / "console.log"

    def own_terminal() -> None:  # the pty becomes the runner's controlling terminal, as in a shell
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    with open(log, "wb") as out:
        proc = env.popen(
            "run", image, "--console", *env.boot_args(guest),
            stdin=follower, stdout=out, stderr=out, preexec_fn=own_terminal,
        )  # fmt: skip
    os.close(follower)
    try:
        wait_for_text(log, "tick 2", proc)
        os.write(leader, b"\x03")  # raw mode: Ctrl-C is a key for the guest, not a signal for the runner
        wait_for_text(log, "tick 5", proc)
        os.write(leader, b"\x1d")
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    text = log.read_text(errors="replace")
    assert code == 0, text[-800:]
    assert "interactive console: Ctrl-] stops the guest" in text and "Ctrl-] after " in text
    assert env.vhdtool("check", image).returncode == 0
    env.assert_nothing_left()


def boot_sector(message: bytes) -> bytes:
    """A 512-byte MBR whose code writes ``message`` to COM1 and halts (real-mode x86)."""
    code = bytes.fromhex(
        "fa"  # cli
        "31c0"  # xor ax, ax
        "8ed8"  # mov ds, ax
        "be167c"  # mov si, 0x7c16 (the message, right after this code)
        "baf803"  # mov dx, 0x3f8
        "ac"  # .next: lodsb
        "84c0"  # test al, al
        "7403"  # jz .halt
        "ee"  # out dx, al
        "ebf8"  # jmp .next
        "f4"  # .halt: hlt
        "ebfd"  # jmp .halt
    )
    assert len(code) == 0x16
    sector = code + message + b"\0"
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def test_bios_boots_the_bootloader_of_the_first_image(env: Env, guest: Guest) -> None:
    disk = env.tmp / "mbr.vhd"
    vhdtool.create(disk, size=8 << 20)
    with vhdtool.open(disk, writable=True) as image:
        image.pwrite(0, boot_sector(b"BIOS-BOOT-OK\r\n"))
        image.flush()
    done = env.vhdtool("run", disk, "--snapshot", "--expect", "^BIOS-BOOT-OK$", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "matched 'BIOS-BOOT-OK' after" in done.stderr
    env.assert_nothing_left()
