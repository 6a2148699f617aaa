"""The QEMU command line for a guest: a pure function of what the runner decided.

Machine: q35 with every disk a virtio-blk-pci device whose backend is vhdtool's NBD server on a
private unix socket (Debian kernels lack virtio-mmio command-line devices, and qemu's own ``vpc``
driver reads a differencing VHD as if it had no parent). ``-nodefaults`` keeps the machine
small; ``-no-reboot`` turns a guest reboot or a ``panic=-1`` into QEMU exiting, which is what a
runner waiting for a guest to finish wants. The serial console is QEMU's stdio (pipes to the
runner); the guest starts paused (``-S``) so that the runner's QMP connection is up before the
first instruction runs. The destination of a migration (``incoming``) runs no instruction before
the source's state has arrived, and then starts by itself: it gets ``-incoming`` instead of ``-S``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

from vhdtool.errors import VhdError
from vhdtool.run.host import Accel, tsc_khz

QEMU_BINARY = "qemu-system-x86_64"
AGENT_PORT = "org.qemu.guest_agent.0"
"""The virtio-serial port name qemu-ga looks for (``/sys/class/virtio-ports/*/name`` in the guest)."""

DEFAULT_APPEND = "console=ttyS0 root=/dev/vda rw panic=-1"


@dataclass(frozen=True, slots=True)
class DiskSpec:
    node: str
    """Device name and QEMU node name: vda, vdb, ..."""
    socket: str
    export: str
    read_only: bool = False


@dataclass(slots=True)
class MachineSpec:
    name: str
    accel: Accel
    memory_mib: int
    cpus: int
    disks: list[DiskSpec]
    runner_monitor_fd: int
    """A listening unix socket QEMU inherits for the runner's own QMP connection: bound before
    QEMU starts, so the runner connects at once instead of polling for the socket to appear."""
    monitor: str
    """The QMP unix socket QEMU listens on for everyone else."""
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    agent_socket: str | None = None
    net: str = "none"
    incoming: str | None = None
    """QEMU's migration URI to wait on (``unix:PATH``, ``tcp:HOST:PORT``), or None to boot."""


def find_qemu() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise VhdError(f"{QEMU_BINARY} not found on PATH: install it (Debian package qemu-system-x86)")
    return path


def _opt(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


def kernel_append(spec: MachineSpec) -> str:
    """The kernel command line: the user's (or the default), plus ``tsc_early_khz=`` under TCG
    unless the user set it, so that the kernel does not stall calibrating its clock."""
    append = spec.append if spec.append is not None else DEFAULT_APPEND
    if spec.accel.name == "tcg" and "tsc_early_khz=" not in append:
        append = f"{append} tsc_early_khz={tsc_khz()}".strip()
    return append


def command_line(qemu: str, spec: MachineSpec) -> list[str]:
    argv = [
        qemu,
        "-name", _opt(spec.name),
        "-machine", "q35",
        "-accel", spec.accel.name,
        "-m", f"{spec.memory_mib}M",
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-no-reboot",
        *(["-incoming", spec.incoming] if spec.incoming is not None else ["-S"]),
        "-chardev", "stdio,id=console0,signal=off",
        "-serial", "chardev:console0",
    ]  # fmt: skip
    if spec.accel.name == "kvm":
        argv += ["-cpu", "host"]
    argv += [
        "-chardev", f"socket,id=qmp0,fd={spec.runner_monitor_fd},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev", f"socket,id=qmp1,path={_opt(spec.monitor)},server=on,wait=off",
        "-mon", "chardev=qmp1,mode=control",
    ]  # fmt: skip
    for i, disk in enumerate(spec.disks):
        backend = {
            "driver": "nbd",
            "node-name": disk.node,
            "server": {"type": "unix", "path": disk.socket},
            "export": disk.export,
            "read-only": disk.read_only,
        }
        device = f"virtio-blk-pci,drive={disk.node},id={disk.node}-dev"
        if spec.kernel is None and i == 0:
            device += ",bootindex=0"  # BIOS boot from the first image
        argv += ["-blockdev", json.dumps(backend, separators=(",", ":")), "-device", device]
    if spec.agent_socket is not None:
        argv += [
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=agent0,path={_opt(spec.agent_socket)},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}",
        ]  # fmt: skip
    if spec.net == "user":
        # romfile= : no PXE option ROM, which Debian ships in a separate package (ipxe-qemu)
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile="]
    if spec.kernel is not None:
        argv += ["-kernel", spec.kernel, "-append", kernel_append(spec)]
        if spec.initrd is not None:
            argv += ["-initrd", spec.initrd]
    return argv
