"""`vhdtool rebase` keeps what the child reads over its new parent; `--unsafe` and `relink` only
rewrite the parent link; chains moved between folders open again after `relink`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, run
from tests.helpers import vhdtool as cli
from tests.ops.oputil import ctrl_c_once_started, folder_digests, make_chain, read_all
from vhdtool.ops.convert import convert
from vhdtool.ops.rebase import rebase


def _parent_uuid(path: Path) -> str:
    with vhdtool.open(path) as img:
        return str(img.meta.parent_uuid)


def test_safe_rebase_onto_grandparent(tmp_path: Path) -> None:
    base, _mid, top = make_chain(tmp_path, 2)
    expected = read_all(top)
    result = cli("rebase", "--json", top, "--parent", base)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["copied-bytes"] > 0
    with vhdtool.open(top) as img:
        assert [Path(i.path).name for i in img.chain()] == ["layer2.vhd", "base.vhd"]
    assert read_all(top) == expected
    assert cli("check", top).returncode == 0


def test_safe_rebase_onto_unrelated_disk(tmp_path: Path) -> None:
    _base, child = make_chain(tmp_path, 1)
    other = tmp_path / "other.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "force_size=on", other, "24M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x99 0 24M", other)
    expected = read_all(child)
    rebase(child, other)
    assert read_all(child) == expected
    with vhdtool.open(other) as img:
        assert _parent_uuid(child) == str(img.meta.uuid)


def test_unsafe_rebase_onto_a_copy(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    expected = read_all(child)
    copy = tmp_path / "copy.vhd"
    shutil.copy(base, copy)
    assert cli("reset-id", copy).returncode == 0  # a copy with its own identity
    assert cli("rebase", "--unsafe", child, "--parent", copy).returncode == 0
    base.unlink()
    assert read_all(child) == expected
    assert cli("check", child).returncode == 0


def test_relink_a_movedmake_chain(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    make_chain(tmp_path / "a", 2)
    expected = read_all(tmp_path / "a" / "layer2.vhd")
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    (moved / "base.vhd").rename(moved / "renamed-base.vhd")
    (moved / "layer1.vhd").rename(moved / "renamed-mid.vhd")
    assert "parent disk not found" in cli("info", moved / "layer2.vhd").stderr
    assert cli("cat", moved / "layer2.vhd:/x").returncode == 1  # reading data needs the chain
    result = cli("relink", moved / "layer2.vhd")
    assert result.returncode == 0, result.stderr
    assert read_all(moved / "layer2.vhd") == expected
    info = json.loads(cli("info", "--json", moved / "layer2.vhd").stdout)
    locators = {loc["code"]: loc["path"] for loc in info["format-specific"]["data"]["parent-locators"]}
    assert locators == {"W2ru": ".\\renamed-mid.vhd", "W2ku": str(moved / "renamed-mid.vhd")}
    for name in ("layer2.vhd", "renamed-mid.vhd"):
        check = json.loads(cli("check", "--json", moved / name).stdout)
        assert check["corruptions"] == 0 and check["leaks"] == 0, check


def test_refusals_change_nothing(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    convert(tmp_path / "src.raw", tmp_path / "other.vhd")
    vhdtool.create(tmp_path / "grandchild.vhd", parent=child)
    before = folder_digests(tmp_path)
    for args in (
        ["rebase", "layer1.vhd", "--parent", "missing.vhd"],
        ["rebase", "base.vhd", "--parent", "other.vhd"],  # not a differencing disk
        ["rebase", "layer1.vhd", "--parent", "grandchild.vhd"],  # a loop
        ["rebase", "layer1.vhd", "--parent", "layer1.vhd"],
        ["relink", "base.vhd"],
        ["relink", "layer1.vhd", "--parent", "other.vhd"],  # wrong UUID
    ):
        assert_clean_error(cli(*args, cwd=tmp_path))
    assert folder_digests(tmp_path) == before
    base.rename(tmp_path / "gone.vhd")
    before = folder_digests(tmp_path)
    result = cli("rebase", "layer1.vhd", "--parent", "other.vhd", cwd=tmp_path)
    assert_clean_error(result)
    assert "--unsafe" in result.stderr and folder_digests(tmp_path) == before


def test_ctrl_c_leaves_the_child_on_its_old_parent(tmp_path: Path) -> None:
    base, mid, top = make_chain(tmp_path, 2)
    expected = read_all(top)

    with pytest.raises(KeyboardInterrupt):
        rebase(top, base, progress=ctrl_c_once_started)
    with vhdtool.open(top) as img:
        assert img.parent is not None and Path(img.parent.path).name == mid.name
    assert read_all(top) == expected
    rebase(top, base)
    assert read_all(top) == expected
