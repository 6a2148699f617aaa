"""switch_write_layer: later requests go to the new layer, requests in flight finish on the old."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

import vhdtool
from tests.nbd.conftest import SIZE, Chain, Serve
from tests.nbd.libnbd import nbd
from vhdtool.errors import UsageError
from vhdtool.format.blockdev import RawFile
from vhdtool.format.filter import Filter
from vhdtool.format.layers import open_over

MiB = 1 << 20


class Recorded(Filter):
    """A RawFile whose writes and flushes are logged, and whose writes can be held at a gate:
    lets a test hold a request in flight while it switches layers. Everything else passes
    through to the file, as a filter forwards what it leaves out."""

    def __init__(self, name: str, path: Path, log: list[tuple[str, str, int]], gate: threading.Event) -> None:
        super().__init__(RawFile(path, writable=True), owns_lower=True)
        self.name = name
        self.log = log
        self.gate = gate
        self.entered = threading.Event()

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.entered.set()
        assert self.gate.wait(60), "test gate never opened"
        self.lower.pwrite(offset, data)
        self.log.append((self.name, "pwrite", offset))

    def flush(self) -> None:
        self.lower.flush()
        self.log.append((self.name, "flush", 0))


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old.raw", tmp_path / "new.raw"
    with open(old, "wb") as f:
        f.truncate(SIZE)
        f.write(b"original" * 512)
    shutil.copy(old, new)  # the new layer starts out reading what the old one holds
    return old, new


def test_later_requests_go_to_the_new_layer(layers: tuple[Path, Path], serve: Serve) -> None:
    old_path, new_path = layers
    old, new = RawFile(old_path, writable=True), RawFile(new_path, writable=True)
    thread, uri = serve(old)
    h = nbd.NBD()
    h.connect_uri(uri)
    h.pwrite(b"1" * 4096, 0)
    (old_path.parent / "small.raw").write_bytes(bytes(4096))
    with pytest.raises(UsageError, match="size"):
        thread.switch_write_layer("", RawFile(old_path.parent / "small.raw", writable=True))
    with pytest.raises(UsageError, match="writable"):
        thread.switch_write_layer("", RawFile(new_path))
    with pytest.raises(UsageError, match="no export"):
        thread.switch_write_layer("other", new)
    assert thread.switch_write_layer("", new) is old
    h.pwrite(b"2" * 4096, MiB)
    assert h.pread(4096, 0) == b"original" * 512  # the new layer's copy: the client's own write went to old
    h.shutdown()
    thread.stop()
    with open(old_path, "rb") as f:
        assert f.read(4096) == b"1" * 4096
        f.seek(MiB)
        assert f.read(4096) == bytes(4096)
    with open(new_path, "rb") as f:
        f.seek(MiB)
        assert f.read(4096) == b"2" * 4096
    old.close()


def test_requests_in_flight_finish_on_the_old_layer(layers: tuple[Path, Path], serve: Serve) -> None:
    log: list[tuple[str, str, int]] = []
    gate = threading.Event()
    old = Recorded("old", layers[0], log, gate)
    new = Recorded("new", layers[1], log, gate)
    thread, uri = serve(old)
    h = nbd.NBD()
    h.connect_uri(uri)
    first = h.aio_pwrite(b"A" * 4096, 0)
    assert old.entered.wait(30)  # the write is inside the old layer, held at the gate
    switched: list[object] = []
    switcher = threading.Thread(target=lambda: switched.append(thread.switch_write_layer("", new)))
    switcher.start()
    export = thread.server.exports[""]
    for _ in range(3000):  # until the switch holds new requests back (it cannot finish: A is held)
        if export.switching:
            break
        time.sleep(0.01)
    assert export.switching
    second = h.aio_pwrite(b"B" * 4096, 8192)  # arrives while the switch waits
    switcher.join(0.3)
    assert switcher.is_alive() and not switched, "switched with a write still in flight"
    gate.set()
    switcher.join(30)
    assert switched == [old]
    while h.aio_in_flight():
        h.poll(-1)
    assert h.aio_command_completed(first) and h.aio_command_completed(second)  # raise if they failed
    assert log == [("old", "pwrite", 0), ("old", "flush", 0), ("new", "pwrite", 8192)]
    h.shutdown()
    thread.stop()
    old.close()


def test_snapshot_flow_on_a_vhd_chain(chain: Chain, serve: Serve, tmp_path: Path) -> None:
    """What the snapshot coordinator does: a new differencing child of the served top becomes the
    write layer; the old top keeps exactly what was written before the switch."""
    thread, uri = serve(chain.top)
    old = thread.server.exports[""].device
    h = nbd.NBD()
    h.connect_uri(uri)
    h.pwrite(b"A" * 300000, 10 * MiB)
    child_path = tmp_path / "child.vhd"
    vhdtool.create(child_path, parent=chain.top)
    child = open_over(child_path, old, uuid.UUID(bytes=bytes(old.meta.footer.unique_id)), writable=True)  # type: ignore[attr-defined]
    assert thread.switch_write_layer("", child) is old
    h.pwrite(b"B" * 300000, 10 * MiB + 200000)
    want = bytearray(chain.expected)
    want[10 * MiB : 10 * MiB + 300000] = b"A" * 300000
    want[10 * MiB + 200000 : 10 * MiB + 500000] = b"B" * 300000
    assert h.pread(MiB, 10 * MiB) == want[10 * MiB : 11 * MiB]  # spliced from two files of the chain
    h.shutdown()
    thread.stop()
    child.close()
    old.close_chain()  # (closing twice is harmless: the fixture does too)
    with vhdtool.open(chain.top) as top:
        assert top.pread(10 * MiB, 500000) == b"A" * 300000 + chain.expected[10 * MiB + 300000 : 10 * MiB + 500000]
    with vhdtool.open(child_path) as image:
        assert image.pread(0, SIZE) == want
