"""A real libvirtd for the libvirt plugin's tests, and TCG domains booting the snapshot test guest.

``running_libvirtd()`` uses the libvirtd that answers on ``qemu:///system``; when none does (a CI
machine without systemd), it starts ``virtlogd`` (unless one runs) and ``libvirtd`` in the
foreground as children of the test session and stops them at the end. Debian's packages come
from ``fixtures/setup.sh``, which also sets ``user``/``group`` ``root`` in
``/etc/libvirt/qemu.conf``: as ``libvirt-qemu``, QEMU cannot open a root-only ``/dev/kvm`` and
libvirt re-probes QEMU on every call (a minute per ``define``).

Domains are named ``t18-…`` plus the test session's pid, so that concurrent sessions on one
daemon never touch each other's domains; each fixture destroys and undefines only its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from tests.helpers import stop_process

URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def _answers(uri: str = URI) -> bool:
    return subprocess.run(["virsh", "-c", uri, "version"], capture_output=True).returncode == 0


@contextlib.contextmanager
def running_libvirtd(log_dir: Path) -> Iterator[str]:
    """The URI of a libvirtd that answers; started here (and stopped after) when none did."""
    if _answers():
        yield URI
        return
    conf = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    assert '\nuser = "root"' in f"\n{conf}", f'{QEMU_CONF} lacks user = "root": run fixtures/setup.sh'
    started: list[subprocess.Popen[bytes]] = []
    try:
        if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
            with open(log_dir / "virtlogd.log", "wb") as out:
                started.append(subprocess.Popen(["virtlogd"], stdout=out, stderr=out, start_new_session=True))
        with open(log_dir / "libvirtd.log", "wb") as out:
            started.append(subprocess.Popen(["libvirtd"], stdout=out, stderr=out, start_new_session=True))
        end = time.monotonic() + 60
        while not _answers():
            assert started[-1].poll() is None, (log_dir / "libvirtd.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < end, "libvirtd did not answer within 60 s"
            time.sleep(0.2)
        yield URI
    finally:
        for proc in reversed(started):
            stop_process(proc)


DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
<cmdline>{append}</cmdline></os>
<devices>{disk}
<serial type='file'><source path='{console}'/></serial><console type='file'><source path='{console}'/></console>
{channel}</devices></domain>"""

AGENT_CHANNEL = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def file_disk(path: Path) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{path}'/>"
            "<target dev='vda' bus='virtio'/></disk>")  # fmt: skip


def nbd_disk(socket: Path) -> str:
    return ("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd'>"
            f"<host transport='unix' socket='{socket}'/></source><target dev='vda' bus='virtio'/></disk>")  # fmt: skip


@dataclass
class Domain:
    """A running libvirt domain booted from the snapshot test guest."""

    name: str
    conn: Any
    console: Path

    @property
    def dom(self) -> Any:
        return self.conn.lookupByName(self.name)

    def ticks(self) -> int:
        try:
            return self.console.read_text(errors="replace").count("tick ")
        except FileNotFoundError:
            return 0

    def wait_ticks(self, more_than: int, seconds: float = 180.0) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.ticks() > more_than:
                return True
            time.sleep(0.3)
        return False

    def disk_source(self) -> str:
        """What the live domain XML says its disk reads: a file, or the NBD socket."""
        import xml.etree.ElementTree as ET

        source = ET.fromstring(self.dom.XMLDesc(0)).find("./devices/disk/source")
        assert source is not None
        host = source.find("host")
        return source.get("file") or (host.get("socket", "") if host is not None else "")

    def agent(self, command: str, arguments: dict[str, Any] | None = None, timeout: int = 30) -> Any:
        """One guest-agent command through libvirt (which queues it behind its own)."""
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        return json.loads(libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(request), timeout, 0))["return"]

    def run(self, *argv: str) -> None:
        """Run busybox ARGV in the guest and wait for it (arms the slow freeze hook)."""
        pid = self.agent("guest-exec", {"path": "/bin/busybox", "arg": list(argv)})["pid"]
        for _ in range(100):
            if self.agent("guest-exec-status", {"pid": pid})["exited"]:
                return
            time.sleep(0.1)

    def freeze_status(self) -> str:
        return str(self.agent("guest-fsfreeze-status"))


@contextlib.contextmanager
def booted(uri: str, name: str, disk_xml: str, folder: Path, agent: bool = True) -> Iterator[Domain]:
    """Define and start a TCG domain (its console in ``folder``); destroy and undefine it after."""
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from fixtures.guest import ensure_guest

    guest = ensure_guest()
    console = folder / f"{name}.console"
    xml = DOMAIN.format(name=name, kernel=guest.kernel, initrd=guest.initrd, append=guest.append, disk=disk_xml,
                        console=console, channel=AGENT_CHANNEL if agent else "")  # fmt: skip
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(uri)
    try:
        conn.defineXML(xml).create()
        yield Domain(name, conn, console)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()
        conn.close()


def session_tag() -> str:
    return f"t18-{os.getpid()}"
