"""The ``libvirt`` hypervisor: guests of any libvirt driver, through libvirt-python (the optional
dependency ``vhdtool[libvirt]``).

Quiesce is ``virDomainFSFreeze``/``FSThaw`` (libvirt talks to the guest agent), pause is
suspend/resume, the agent probe is ``virDomainGetFSInfo`` (answered by the agent). The new write
layer depends on the disk:

- A disk whose source is a unix socket of a ``vhdtool serve`` (``<disk type='network'><source
  protocol='nbd'><host transport='unix' socket='S'/>``): the server that registered ``S``
  (``vhdtool.nbd.served``) switches its write layer to a new VHD differencing child, the same
  atomic switch the runner makes. The point-in-time image and the new layer are VHDs; QEMU and
  libvirt see the same socket throughout. Roll-back is the server switching back.
- A file disk (``<disk type='file'>``): a libvirt disk-only external snapshot: libvirt and QEMU
  create a qcow2 overlay over the disk's current file and switch the running guest to it; the
  file it was is the point-in-time image. A roll-back commits that overlay back (active block
  commit, then pivot). QEMU cannot make VHD differencing layers, and its ``vpc`` driver reads a
  differencing VHD as if it had no parent, so a file disk that is itself a differencing VHD is
  refused (``layerable`` is false); a fixed or dynamic VHD is fine as the overlay's backing file.
- Other disks (block devices, volumes, NBD sockets vhdtool does not serve) are refused.

Several connections (hosts): ``--hypervisor-opt uri=A --hypervisor-opt uri=B`` opens each; the
guests are then named ``DOMAIN@URI``. Remote URIs such as ``qemu+ssh://host/system`` are libvirt's
own way to reach many hosts; a served disk must be served on the host that runs the coordinator.

Freeze state is not exposed by libvirt's public API: ``status`` reports it as unknown.
libvirt's ``test:///`` driver keeps its domains inside the connecting process, so no watchdog
process can reach them, and it implements no external snapshots."""

from __future__ import annotations

import contextlib
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, ClassVar

from vhdtool.nbd import served
from vhdtool.ops.overlay import snapshot_layer_path
from vhdtool.vss import control
from vhdtool.vss.plugin import (
    AgentUnavailable,
    Disk,
    FreezeState,
    Guest,
    GuestStatus,
    Hypervisor,
    HypervisorError,
    OperationTimeout,
    RunState,
)

OVERLAY_COST = 1 << 20


def _libvirt() -> Any:
    import libvirt

    return libvirt


class LibvirtHypervisor(Hypervisor):
    name = "libvirt"
    option_help: ClassVar[Mapping[str, str]] = {
        "uri": "libvirt connection URI (default: libvirt's own default, e.g. qemu:///system); "
        "repeat for several connections, whose guests are named DOMAIN@URI",
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        lv = _libvirt()
        # errors come back as exceptions with their message; libvirt's default handler would
        # also print each one on stderr
        lv.registerErrorHandler(lambda _ctx, _err: None, None)
        uris: list[str | None] = [u for u in self.options.get("uri", "").split(",") if u] or [None]
        self.uri = uris[0]
        self.conns: dict[str | None, Any] = {}
        for uri in dict.fromkeys(uris):
            try:
                self.conns[uri] = lv.open(uri)
            except lv.libvirtError as e:
                self.close()
                raise HypervisorError(f"libvirt {uri or '(default URI)'}: cannot connect: {_msg(e)}") from None
        self.conn = self.conns[self.uri]
        self.qualified = len(self.conns) > 1
        """Whether guest names carry their connection (``DOMAIN@URI``)."""

    @classmethod
    def supports(cls) -> str | None:
        try:
            _libvirt()
        except ImportError:
            return "libvirt-python is not installed (pip install 'vhdtool[libvirt]')"
        return None

    def _domain(self, guest: str) -> Any:
        lv = _libvirt()
        conn, name = self.conn, guest
        if self.qualified:
            name, _, uri = guest.partition("@")
            if uri not in self.conns:
                raise HypervisorError(f"libvirt: {guest!r} is not DOMAIN@URI with one of the URIs given")
            conn = self.conns[uri]
        try:
            return conn.lookupByName(name)
        except lv.libvirtError as e:
            raise HypervisorError(f"libvirt: no domain {guest!r}: {_msg(e)}") from None

    def _call(self, guest: str, what: str, fn: Any, *args: Any) -> Any:
        lv = _libvirt()
        try:
            return fn(*args)
        except lv.libvirtError as e:
            code = e.get_error_code()
            if code in (lv.VIR_ERR_AGENT_UNRESPONSIVE, getattr(lv, "VIR_ERR_AGENT_COMMAND_TIMEOUT", -1)):
                raise AgentUnavailable(f"{guest}: {what}: {_msg(e)}") from None
            if code == lv.VIR_ERR_OPERATION_TIMEOUT:
                raise OperationTimeout(f"{guest}: {what}: {_msg(e)}") from None
            raise HypervisorError(f"{guest}: {what}: {_msg(e)}") from None

    def list_guests(self) -> list[Guest]:
        flag = _libvirt().VIR_CONNECT_LIST_DOMAINS_ACTIVE
        guests = []
        for uri, conn in self.conns.items():
            for d in conn.listAllDomains(flag):
                guests.append(Guest(f"{d.name()}@{uri}" if self.qualified else d.name(), d.UUIDString()))
        return guests

    def _disk_elements(self, guest: str) -> list[tuple[str, ET.Element]]:
        root = ET.fromstring(self._domain(guest).XMLDesc(0))
        found = []
        for el in root.findall("./devices/disk[@device='disk']"):
            target = el.find("target")
            found.append((target.get("dev", "?") if target is not None else "?", el))
        return found

    def _served(self, guest: str, disk_id: str) -> tuple[str, str] | None:
        """(control socket, export) of the vhdtool server feeding ``disk_id``, if one does."""
        for dev, el in self._disk_elements(guest):
            if dev == disk_id:
                return _served_source(el)
        raise HypervisorError(f"{guest}: no disk {disk_id}")

    def list_disks(self, guest: str) -> list[Disk]:
        disks = []
        for dev, el in self._disk_elements(guest):
            source = el.find("source")
            driver = el.find("driver")
            if el.get("type") == "network":
                served = _served_source(el)
                if served is not None:
                    disks.append(Disk(dev, _served_layers(guest, served)[served[1]]))
                else:
                    socket = _nbd_socket(el)
                    what = f"nbd socket {socket} not served by vhdtool" if socket else "network disk"
                    disks.append(Disk(dev, f"({what})", False))
                continue
            path = (source.get("file") if source is not None else None) or ""
            fmt = driver.get("type", "raw") if driver is not None else "raw"
            layerable = el.get("type") == "file" and bool(path) and not _is_differencing_vhd(path, fmt)
            disks.append(Disk(dev, path or f"({el.get('type')} disk)", layerable))
        return disks

    def probe_agent(self, guest: str, timeout: float) -> bool:
        try:
            self._call(guest, "guest agent", self._domain(guest).fsInfo)
        except HypervisorError:
            return False
        return True

    def freeze(self, guest: str, timeout: float) -> int:
        return int(self._call(guest, "fsfreeze", self._domain(guest).fsFreeze))

    def thaw(self, guest: str, timeout: float) -> None:
        self._call(guest, "fsthaw", self._domain(guest).fsThaw)

    def pause(self, guest: str, timeout: float) -> None:
        self._call(guest, "suspend", self._domain(guest).suspend)

    def resume(self, guest: str, timeout: float) -> None:
        dom = self._domain(guest)
        if dom.state()[0] == _libvirt().VIR_DOMAIN_PAUSED:  # resume of a running domain is an error
            self._call(guest, "resume", dom.resume)

    def layer_path(self, guest: str, disk: Disk, group: str) -> str:
        if self._served(guest, disk.id) is not None:
            return super().layer_path(guest, disk, group)
        # named like a VHD layer (a later snapshot's overlay drops the earlier group from the name)
        return f"{os.path.splitext(snapshot_layer_path(disk.path, group))[0]}.qcow2"

    def layer_cost(self, guest: str, disk: Disk) -> int:
        if self._served(guest, disk.id) is not None:
            return super().layer_cost(guest, disk)
        return OVERLAY_COST

    def new_layer(self, guest: str, disk: Disk, path: str) -> str:
        if self._served(guest, disk.id) is not None:
            return super().new_layer(guest, disk, path)
        # libvirt creates the overlay itself, at the switch, atomically with the guest's switch
        if os.path.exists(path):
            raise HypervisorError(f"{path}: file exists")
        return path

    def switch_disk(self, guest: str, disk: Disk, layer: str, timeout: float) -> None:
        served = self._served(guest, disk.id)
        if served is not None:
            control.call(served[0], {"op": "switch", "export": served[1], "layer": layer}, timeout)
            return
        lv = _libvirt()
        dom = self._domain(guest)
        if os.path.realpath(layer) == os.path.realpath(disk.path):
            self._commit_back(guest, dom, disk, timeout)
            return
        xml = (
            "<domainsnapshot><memory snapshot='no'/><disks>"
            f"<disk name='{_attr(disk.id)}' snapshot='external' type='file'>"
            f"<driver type='qcow2'/><source file='{_attr(layer)}'/></disk>"
            + "".join(f"<disk name='{_attr(d.id)}' snapshot='no'/>" for d in self.list_disks(guest) if d.id != disk.id)
            + "</disks></domainsnapshot>"
        )
        flags = (
            lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | lv.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | lv.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        )
        self._call(guest, f"external snapshot of {disk.id}", dom.snapshotCreateXML, xml, flags)

    def _commit_back(self, guest: str, dom: Any, disk: Disk, timeout: float) -> None:
        """Undo an external snapshot: commit the active overlay into its backing file, pivot."""
        lv = _libvirt()
        flags = lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | lv.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
        self._call(guest, f"block commit of {disk.id}", dom.blockCommit, disk.id, None, None, 0, flags)
        deadline = time.monotonic() + max(timeout, 1.0)
        while True:
            info = self._call(guest, "block job", dom.blockJobInfo, disk.id, 0)
            if info and info.get("end") and info.get("cur") == info.get("end"):
                break
            if time.monotonic() > deadline:
                raise OperationTimeout(f"{guest}: committing {disk.id} back did not finish in {timeout:g}s")
            time.sleep(0.05)
        self._call(guest, "pivot", dom.blockJobAbort, disk.id, lv.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)

    def status(self, guest: str, timeout: float) -> GuestStatus:
        lv = _libvirt()
        state = self._domain(guest).state()[0]
        run = {lv.VIR_DOMAIN_RUNNING: RunState.RUNNING, lv.VIR_DOMAIN_PAUSED: RunState.PAUSED}.get(
            state, RunState.STOPPED
        )
        return GuestStatus(run, FreezeState.UNKNOWN, {d.id: d.path for d in self.list_disks(guest)})

    def rescue_options(self) -> dict[str, str] | None:
        if any((uri or "").startswith("test:") for uri in self.conns):
            return None  # the test driver's domains exist only inside this process
        return dict(self.options)

    def close(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(Exception):  # closing a dead connection is not worth an error
                conn.close()
        self.conns = {}


def _msg(e: Any) -> str:
    return str(e.get_error_message() or e).strip()


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


def _nbd_socket(el: ET.Element) -> str | None:
    source = el.find("source")
    if source is None or source.get("protocol") != "nbd":
        return None
    host = source.find("host")
    if host is None or host.get("transport") != "unix":
        return None
    return host.get("socket")


def _served_source(el: ET.Element) -> tuple[str, str] | None:
    """(control socket, export name) when the disk is an NBD unix socket a vhdtool serve owns."""
    socket = _nbd_socket(el)
    if socket is None:
        return None
    server = served.find(socket)
    if server is None:
        return None
    source = el.find("source")
    export = (source.get("name") if source is not None else None) or ""
    return (server.control, export) if export in server.exports else None


def _served_layers(guest: str, served_at: tuple[str, str]) -> dict[str, str]:
    layers = control.call(served_at[0], {"op": "layers"}, 10)["layers"]
    if served_at[1] not in layers:
        raise HypervisorError(f"{guest}: vhdtool serve has no export {served_at[1]!r}")
    return {k: str(v) for k, v in layers.items()}


def _is_differencing_vhd(path: str, fmt: str) -> bool:
    if fmt != "vpc":
        return False
    try:
        from vhdtool.format.metadata import read_metadata

        return read_metadata(path).type_name == "differencing"  # no lock: the guest's disk is in use
    except Exception:  # unreadable here: let libvirt decide
        return False
