"""Fixtures for the NBD tests: a 3-deep differencing chain with a known content, and servers.

The chain's expected bytes are built from the writes themselves (an oracle independent of
vhdtool's reader): base.vhd is made and written by qemu-img/qemu-io, mid.vhd and top.vhd are
vhdtool differencing children written through vhdtool.open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, run
from vhdtool.format.blockdev import BlockDevice
from vhdtool.nbd import NbdServer, ServerThread

MiB = 1 << 20
SIZE = 64 * MiB

# (layer, offset, length, byte): what each layer of the chain holds
WRITES = [
    ("base", 0, 8 * MiB, 0x42),
    ("base", 30 * MiB, 2 * MiB, 0x43),
    ("mid", 1 * MiB, 70000, 0x77),
    ("mid", 20 * MiB + 512, 4096, 0x55),
    ("top", 31 * MiB, 5000, 0x88),
    ("top", 50 * MiB + 3, 1000, 0x66),
]


@dataclass
class Chain:
    base: Path
    mid: Path
    top: Path
    expected: bytes


def expected_bytes() -> bytes:
    data = bytearray(SIZE)
    for _, offset, length, byte in WRITES:
        data[offset : offset + length] = bytes([byte]) * length
    return bytes(data)


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    base, mid, top = tmp_path / "base.vhd", tmp_path / "mid.vhd", tmp_path / "top.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "force_size=on", base, str(SIZE))
    io = [f"write -P {byte:#x} {offset} {length}" for layer, offset, length, byte in WRITES if layer == "base"]
    run(need("qemu-io"), "-f", "vpc", *(a for c in io for a in ("-c", c)), base)
    vhdtool.create(mid, parent=base)
    vhdtool.create(top, parent=mid)
    for name, path in (("mid", mid), ("top", top)):
        with vhdtool.open(path, writable=True) as image:
            for layer, offset, length, byte in WRITES:
                if layer == name:
                    image.pwrite(offset, bytes([byte]) * length)
            image.flush()
    return Chain(base, mid, top, expected_bytes())


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client sends, the server logs no internal error and asyncio no unhandled one."""
    caplog.set_level(logging.INFO, logger="vhdtool.nbd")
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name in ("vhdtool.nbd", "asyncio")]
    assert not bad, [r.getMessage() for r in bad]


Serve = Callable[..., tuple[ServerThread, str]]

DATA_PATHS = [
    pytest.param({}, id="spliced-inline"),
    pytest.param({"pipes": 0, "inline_reads": False}, id="copied-workers"),
]
"""Server options selecting each way reads reach the socket (see NbdServer)."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """serve(image path or device, read_only=False, name="", **server options) -> (thread, uri).

    Listens on a unix socket. An image given by path is opened here (writable unless read_only);
    either way the fixture closes the device after its server stopped.
    """
    started: list[tuple[ServerThread, BlockDevice]] = []

    def start(
        target: Path | BlockDevice, *, read_only: bool = False, name: str = "", **options: float
    ) -> tuple[ServerThread, str]:
        device = vhdtool.open(target, writable=not read_only) if isinstance(target, Path) else target
        server = NbdServer(**options)  # type: ignore[arg-type]
        server.add_export(name, device, read_only=read_only)
        thread = ServerThread(server)
        started.append((thread, device))
        return thread, thread.start_unix(tmp_path / f"nbd{len(started)}.sock")

    yield start
    for thread, device in started:
        thread.stop()
        device.close_chain()


def socket_of(uri: str) -> str:
    return uri.split("socket=", 1)[1]
