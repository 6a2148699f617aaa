"""The layer-switch endpoint over a real NBD server, with qemu-io as the client writing through
it: after a switch the old top holds the point in time and writes land in the new layer; a switch
back (roll-back) returns the writes to the old top."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, run
from vhdtool.errors import LockedError
from vhdtool.nbd import NbdServer, ServerThread, layercontrol
from vhdtool.nbd.layercontrol import LayerControlError

MiB = 1 << 20


class Served:
    def __init__(self, tmp: Path) -> None:
        self.top = tmp / "disk.vhd"
        vhdtool.create(self.top, size=16 * MiB)
        self.device = vhdtool.open(self.top, writable=True)
        self.thread = ServerThread(NbdServer())
        self.thread.server.add_export("vda", self.device)
        self.uri = self.thread.start_unix(tmp / "nbd.sock")
        self.socket = str(tmp / "control.sock")
        self.control = layercontrol.LayerControl(self.thread.server, self.socket)
        self.thread._call(self.control.start())

    def write(self, byte: int) -> None:
        run(need("qemu-io"), "-f", "raw", "-c", f"write -P {byte:#x} 0 4096", self.uri)

    def reads(self, byte: int) -> None:
        """The disk as the guest sees it (through the server) holds ``byte`` at its start."""
        run(need("qemu-io"), "-f", "raw", "-c", f"read -P {byte:#x} 0 4096", self.uri)

    def ask(self, **request: str) -> dict[str, object]:
        return layercontrol.call(self.socket, request, 10)

    def close(self) -> None:
        self.thread._call(self.control.close())
        top = self.thread.server.exports["vda"].device
        self.thread.stop()
        top.close_chain()  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.close()


def first_bytes(path: Path) -> bytes:
    with vhdtool.open(path) as image:
        return image.pread(0, 4096)


def test_switch_then_roll_back(served: Served, tmp_path: Path) -> None:
    served.write(0xAA)
    layer = tmp_path / "disk.G.vhd"
    vhdtool.create(layer, parent=served.top)
    assert served.ask(op="switch", export="vda", layer=str(layer)) == {"ok": True}
    assert served.ask(op="layers")["layers"] == {"vda": str(layer)}
    served.write(0xBB)
    assert first_bytes(served.top) == b"\xaa" * 4096  # the point in time
    served.reads(0xBB)  # the guest's view: the new layer over it
    with vhdtool.open(layer) as chain:  # the old top is held as a parent (shared): others can read
        assert chain.pread(0, 4096) == b"\xbb" * 4096
    with pytest.raises(LockedError):  # but nobody may write the point in time
        vhdtool.open(served.top, writable=True)
    served.ask(op="switch", export="vda", layer=str(layer))  # idempotent
    served.ask(op="switch", export="vda", layer=str(served.top))  # roll back
    assert served.ask(op="layers")["layers"] == {"vda": str(served.top)}
    served.write(0xCC)
    assert first_bytes(served.top) == b"\xcc" * 4096


def test_bad_switches_are_refused_and_change_nothing(served: Served, tmp_path: Path) -> None:
    stranger = tmp_path / "other.vhd"
    vhdtool.create(stranger, size=16 * MiB)
    foreign_child = tmp_path / "foreign.vhd"
    vhdtool.create(foreign_child, parent=stranger)
    for layer, message in [
        (tmp_path / "missing.vhd", "cannot open"),
        (stranger, "not a differencing disk"),
        (foreign_child, "expects parent UUID"),
    ]:
        with pytest.raises(LayerControlError, match=message):
            served.ask(op="switch", export="vda", layer=str(layer))
    with pytest.raises(LayerControlError, match="no export"):
        served.ask(op="switch", export="vdb", layer=str(stranger))
    with pytest.raises(LayerControlError, match="unknown op"):
        served.ask(op="explode")
    assert served.ask(op="layers")["layers"] == {"vda": str(served.top)}
    served.write(0x11)
    assert first_bytes(served.top) == b"\x11" * 4096
