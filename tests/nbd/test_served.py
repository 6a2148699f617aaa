"""`vhdtool serve` on record: a writable server on a unix socket registers itself and switches its
write layer on request (what the libvirt plugin asks of it), with the socket's mode and group as
given; servers that cannot take a layer (read-only, --snapshot) do not register."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, assert_clean_error
from tests.helpers import vhdtool as run_vhdtool
from vhdtool.nbd import layercontrol, served


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VHDTOOL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@contextmanager
def serving(image: Path, sock: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*VHDTOOL, "serve", image, "--socket", sock, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"nbd+unix://"), proc.stderr
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_a_writable_server_registers_and_switches_layers(state: Path, tmp_path: Path) -> None:
    image, sock, layer = tmp_path / "d.vhd", tmp_path / "d.sock", tmp_path / "d.layer.vhd"
    vhdtool.create(image, size=8 << 20)
    with serving(image, sock, "--socket-mode", "0660", "--socket-group", "0") as proc:
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 0
        entry = served.find(str(sock))
        assert entry is not None and entry.pid == proc.pid and entry.image == str(image) and entry.exports == ("",)
        vhdtool.create(layer, parent=image)
        layercontrol.call(entry.control, {"op": "switch", "export": "", "layer": str(layer)}, 10)
        assert layercontrol.call(entry.control, {"op": "layers"}, 10)["layers"] == {"": str(layer)}
        layercontrol.call(entry.control, {"op": "switch", "export": "", "layer": str(image)}, 10)  # and back
        assert layercontrol.call(entry.control, {"op": "layers"}, 10)["layers"] == {"": str(image)}
    assert served.find(str(sock)) is None and os.listdir(state / "serve") == []


@pytest.mark.parametrize("flag", ["--read-only", "--snapshot"])
def test_servers_that_take_no_layer_do_not_register(state: Path, tmp_path: Path, flag: str) -> None:
    image, sock = tmp_path / "d.vhd", tmp_path / "d.sock"
    vhdtool.create(image, size=8 << 20)
    with serving(image, sock, flag):
        assert served.find(str(sock)) is None


def test_an_entry_of_a_killed_server_is_stale(state: Path, tmp_path: Path) -> None:
    image, sock = tmp_path / "d.vhd", tmp_path / "d.sock"
    vhdtool.create(image, size=8 << 20)
    with serving(image, sock) as proc:
        assert served.find(str(sock)) is not None
        proc.kill()
        proc.wait()
        assert (state / "serve" / f"{proc.pid}.json").exists()
        assert served.find(str(sock)) is None  # its lock went with it
        assert os.listdir(state / "serve") == []  # and the finder cleaned up


def test_bad_socket_options_are_usage_errors(state: Path, tmp_path: Path) -> None:
    image = tmp_path / "d.vhd"
    vhdtool.create(image, size=8 << 20)
    before = image.read_bytes()
    for args in (["--socket-mode", "999"], ["--socket-mode", "0660"], ["--socket", "s", "--socket-group", "no-such"]):
        assert_clean_error(run_vhdtool("serve", image, *args), 64)
    assert image.read_bytes() == before
