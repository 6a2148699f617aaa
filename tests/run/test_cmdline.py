"""The QEMU command line and the console matcher, as pure functions (the boot tests run them)."""

from __future__ import annotations

import io
import json
import re

from vhdtool.run.console import ConsoleLog
from vhdtool.run.host import Accel
from vhdtool.run.qemu import AGENT_PORT, DiskSpec, MachineSpec, command_line, kernel_append

TCG = Accel("tcg", "test")
KVM = Accel("kvm", "test")


def spec(**kw: object) -> MachineSpec:
    base: dict[str, object] = {
        "name": "g",
        "accel": TCG,
        "memory_mib": 512,
        "cpus": 2,
        "disks": [DiskSpec("vda", "/s/nbd.sock", "vda"), DiskSpec("vdb", "/s/nbd.sock", "vdb")],
        "runner_monitor_fd": 7,
        "monitor": "/s/qmp,1.sock",
    }
    base.update(kw)
    return MachineSpec(**base)  # type: ignore[arg-type]


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == option]


def test_q35_virtio_blk_over_nbd_unix_sockets() -> None:
    argv = command_line("qemu", spec(kernel="/k", initrd="/i"))
    assert values(argv, "-machine") == ["q35"] and values(argv, "-accel") == ["tcg"]
    assert values(argv, "-m") == ["512M"] and values(argv, "-smp") == ["2"]
    backends = [json.loads(b) for b in values(argv, "-blockdev")]
    assert [(b["driver"], b["node-name"], b["server"], b["export"]) for b in backends] == [
        ("nbd", "vda", {"type": "unix", "path": "/s/nbd.sock"}, "vda"),
        ("nbd", "vdb", {"type": "unix", "path": "/s/nbd.sock"}, "vdb"),
    ]
    devices = values(argv, "-device")
    assert devices == ["virtio-blk-pci,drive=vda,id=vda-dev", "virtio-blk-pci,drive=vdb,id=vdb-dev"]
    assert "-S" in argv and "-no-reboot" in argv and "-nodefaults" in argv
    assert values(argv, "-initrd") == ["/i"]
    # the runner's monitor is an inherited listening socket; a comma in a path is doubled
    assert "socket,id=qmp0,fd=7,server=on,wait=off" in values(argv, "-chardev")
    assert "socket,id=qmp1,path=/s/qmp,,1.sock,server=on,wait=off" in values(argv, "-chardev")
    assert values(argv, "-mon") == ["chardev=qmp0,mode=control", "chardev=qmp1,mode=control"]


def test_bios_boot_marks_the_first_disk_bootable() -> None:
    argv = command_line("qemu", spec())
    assert values(argv, "-device")[0].endswith(",bootindex=0")
    assert "bootindex" not in values(argv, "-device")[1]
    assert "-kernel" not in argv and "-append" not in argv


def test_tsc_early_khz_under_tcg_only_and_never_twice() -> None:
    assert re.search(r" tsc_early_khz=\d+$", kernel_append(spec(kernel="/k", append="console=ttyS0")))
    assert kernel_append(spec(kernel="/k", append="x tsc_early_khz=5")) == "x tsc_early_khz=5"
    assert kernel_append(spec(kernel="/k", accel=KVM, append="console=ttyS0")) == "console=ttyS0"
    assert "root=/dev/vda" in kernel_append(spec(kernel="/k"))  # the default command line


def test_kvm_uses_the_host_cpu() -> None:
    assert values(command_line("qemu", spec(accel=KVM)), "-cpu") == ["host"]
    assert "-cpu" not in command_line("qemu", spec())


def test_agent_channel_and_user_network() -> None:
    argv = command_line("qemu", spec(agent_socket="/s/agent.sock", net="user"))
    devices = values(argv, "-device")
    assert "virtio-serial-pci,id=vser0" in devices
    assert f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}" in devices
    assert "virtio-net-pci,netdev=net0,romfile=" in devices
    assert values(argv, "-netdev") == ["user,id=net0"]


def test_console_matches_across_chunks_and_keeps_the_last_lines() -> None:
    out = io.BytesIO()
    log = ConsoleLog(out, re.compile(r"^MARKER-(\w+)$", re.MULTILINE), keep_lines=3)
    chunks = [b"boot\r\nline 1\r\nMARK", b"ER-fro", b"mchild\r\n", "caf\u00e9".encode()[:4], "caf\u00e9".encode()[4:]]
    results = [log.feed(c) for c in chunks]
    assert results == [False, False, True, True, True]
    assert log.matched is not None and log.matched.group(1) == "fromchild"
    assert out.getvalue() == b"".join(chunks)  # passed through untouched
    assert log.last_lines() == ["line 1", "MARKER-fromchild", "caf\u00e9"]


def test_console_ends_an_open_line_before_vhdtool_speaks() -> None:
    out = io.BytesIO()
    log = ConsoleLog(out, re.compile("READY"))
    assert log.feed(b"boot\r\nREADY> ")  # a prompt: the guest leaves the line open
    log.end_line()
    assert out.getvalue() == b"boot\r\nREADY> \n"
    log.end_line()  # nothing open any more: nothing added
    assert out.getvalue().endswith(b"> \n") and log.last_lines() == ["boot", "READY> "]


def test_console_without_expect_never_matches() -> None:
    log = ConsoleLog(None, None)
    assert not log.feed(b"anything\n")
    assert log.last_lines() == ["anything"]
