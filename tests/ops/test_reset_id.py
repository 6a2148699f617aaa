"""`vhdtool reset-id`: a copy gets its own UUID (peers see it), children are updated with --children."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, run
from tests.helpers import vhdtool as cli
from tests.ops.oputil import folder_digests, make_chain, read_all
from vhdtool.errors import ParentError


def _uuid(path: Path) -> str:
    with vhdtool.open(path) as img:
        return str(img.meta.uuid)


def _vhdiinfo_uuid(path: Path) -> str:
    for line in run(need("vhdiinfo"), path).stdout.splitlines():
        if "Identifier" in line and "parent" not in line.lower():
            return line.split(":", 1)[1].strip()
    raise AssertionError("vhdiinfo printed no identifier")


def test_copy_gets_its_own_uuid(tmp_path: Path) -> None:
    base, _child = make_chain(tmp_path, 1)
    copy = tmp_path / "copy" / "base.vhd"
    copy.parent.mkdir()
    shutil.copy(base, copy)
    before = read_all(copy)
    result = cli("reset-id", "--json", copy)
    doc = json.loads(result.stdout)
    assert doc["old-uuid"] == _uuid(base) != doc["new-uuid"] == _uuid(copy) == _vhdiinfo_uuid(copy)
    assert read_all(copy) == before and cli("check", copy).returncode == 0
    assert read_all(tmp_path / "layer1.vhd")  # the original chain is untouched


def test_children_follow(tmp_path: Path) -> None:
    base, mid, top = make_chain(tmp_path, 2)
    expected = read_all(top)
    result = cli("reset-id", base)  # without --children: warned, left dangling
    assert result.returncode == 0 and "layer1.vhd" in result.stderr
    assert "UUID mismatch" in cli("info", mid).stderr  # described, with the broken link named
    with pytest.raises(ParentError):
        vhdtool.open(mid)
    wanted = str(uuid.uuid4())
    result = cli("reset-id", "--children", tmp_path, "--uuid", wanted, base)  # found by their locators
    assert result.returncode == 0 and "layer1.vhd" in result.stdout
    assert _uuid(base) == wanted and read_all(top) == expected
    for path in (base, mid, top):
        check = json.loads(cli("check", "--json", path).stdout)
        assert check["findings"] == [], check


def test_refusals_change_nothing(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    before = folder_digests(tmp_path)
    for args in (["--uuid", "not-a-uuid", "base.vhd"], ["--children", "nowhere", "base.vhd"], ["missing.vhd"]):
        assert_clean_error(cli("reset-id", *args, cwd=tmp_path))
    with vhdtool.open(child):  # the chain is open: base is locked as a parent
        assert_clean_error(cli("reset-id", "--children", ".", "base.vhd", cwd=tmp_path))
    assert folder_digests(tmp_path) == before
    assert base.exists()
