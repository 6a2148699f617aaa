"""The state folder: names are unique while their runner lives (a flock held by another process),
entries of dead runners are cleaned by whoever looks next, socket paths fit a unix socket."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import VHDTOOL
from vhdtool.errors import UsageError
from vhdtool.run import state


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "state"
    monkeypatch.setenv("VHDTOOL_STATE_DIR", str(base))
    return base


@pytest.fixture
def other_runner(folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the name 'disk', as a live `vhdtool run` would."""
    code = textwrap.dedent(
        """
        import sys
        from vhdtool.run import state
        c = state.claim("disk", "disk.vhd")
        c.write({"pid": 1, "qmp": "q", "agent": None, "control": "c", "disks": []})
        print("claimed", flush=True)
        sys.stdin.read()
        c.release()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    yield proc
    proc.kill()
    proc.wait()


def test_default_names_are_the_image_stem_made_unique(folder: Path, other_runner: subprocess.Popen[str]) -> None:
    claim = state.claim(None, "/images/disk.vhd")
    try:
        assert claim.name == "disk-2"
        assert [e.name for e in state.entries()] == ["disk"]  # disk-2 has not published an entry yet
    finally:
        claim.release()
    assert state.default_name("/x/my disk.v1.vhd") == "my_disk.v1"


def test_an_explicit_name_in_use_is_refused(folder: Path, other_runner: subprocess.Popen[str]) -> None:
    with pytest.raises(UsageError, match="'disk' is already running"):
        state.claim("disk", "other.vhd")
    with pytest.raises(UsageError, match="--name"):
        state.claim("../evil", "other.vhd")


@pytest.mark.parametrize("scratch_name", ["vhdtool-scratch-abc", "vhdtool-run-abc"])  # this version's, an earlier one's
def test_the_entry_of_a_killed_runner_is_cleaned_by_the_next_look(
    folder: Path, other_runner: subprocess.Popen[str], tmp_path: Path, scratch_name: str
) -> None:
    scratch = tmp_path / scratch_name
    scratch.mkdir()
    (folder / "disk" / "nbd.sock").touch()
    doc = json.loads((folder / "disk.json").read_text())
    (folder / "disk.json").write_text(json.dumps({**doc, "scratch": str(scratch)}))
    other_runner.kill()  # like kill -9: no clean-up of its own
    other_runner.wait()
    listed = subprocess.run([*VHDTOOL, "ps", "--json"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert list(folder.iterdir()) == []
    assert not scratch.exists()
    claim = state.claim("disk", "disk.vhd")  # the name is free again
    claim.release()


def test_released_claims_leave_an_empty_folder(folder: Path) -> None:
    claim = state.claim(None, "a.vhd")
    claim.write({"pid": 1, "qmp": "q", "agent": None, "control": "c", "disks": []})
    assert state.find("a").doc["pid"] == 1
    claim.release()
    claim.release()
    assert list(folder.iterdir()) == []
    with pytest.raises(UsageError, match="no running guest named 'a'"):
        state.find("a")


def test_socket_paths_longer_than_a_unix_socket_allows_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VHDTOOL_STATE_DIR", str(tmp_path / ("d" * 90)))
    claim = state.claim("guest", "a.vhd")
    try:
        with pytest.raises(UsageError, match="set VHDTOOL_STATE_DIR to a shorter folder"):
            claim.socket("control.sock")
    finally:
        claim.release()


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VHDTOOL_STATE_DIR", str(tmp_path / "explicit"))
    assert state.state_dir() == str(tmp_path / "explicit")
    monkeypatch.delenv("VHDTOOL_STATE_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert state.state_dir() == str(tmp_path / "vhdtool")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state.state_dir() == str(tmp_path / ".cache/vhdtool/run")
