"""`vhdtool merge`: the ancestor ends up reading exactly what the child read (qemu-img compares
it with the chain flattened before the merge); refusals change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error
from tests.helpers import vhdtool as cli
from tests.ops.oputil import ctrl_c_once_started, folder_digests, make_chain, qemu_compare, read_all
from vhdtool.ops.convert import convert
from vhdtool.ops.merge import merge


def _flattened(top: Path, out: Path) -> Path:
    out.write_bytes(read_all(top))
    return out


def test_merge_into_parent(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    expected = _flattened(child, tmp_path / "chain.raw")
    result = cli("merge", "--json", child)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["into"].endswith("base.vhd") and doc["deleted"] == []
    assert qemu_compare(expected, "raw", base, "vpc") == 0
    assert read_all(child) == expected.read_bytes()  # the kept child still reads the same
    for image in (base, child):
        check = json.loads(cli("check", "--json", image).stdout)
        assert check["findings"] == [], check  # no leak, no parent time stamp warning


def test_merge_into_grandparent_and_delete(tmp_path: Path) -> None:
    base, mid, top = make_chain(tmp_path, 2)
    expected = _flattened(top, tmp_path / "chain.raw")
    done = merge(top, into=base, delete_child=True)
    assert [Path(p).name for p in done.merged] == ["layer2.vhd", "layer1.vhd"]
    assert not mid.exists() and not top.exists()
    assert qemu_compare(expected, "raw", base, "vpc") == 0
    assert cli("check", base).returncode == 0


def test_stale_intermediate_is_reported(tmp_path: Path) -> None:
    base, _mid, top = make_chain(tmp_path, 2)
    expected = read_all(top)
    result = cli("merge", "--into", base, top)
    assert result.returncode == 0 and "layer1.vhd" in result.stderr
    assert read_all(top) == expected


def test_siblings_stop_the_merge(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    vhdtool.create(tmp_path / "sibling.vhd", parent=base)
    before = folder_digests(tmp_path)
    result = cli("merge", child)
    assert_clean_error(result)
    assert "sibling.vhd" in result.stderr and folder_digests(tmp_path) == before
    expected = _flattened(child, tmp_path / "chain.raw")
    assert cli("merge", "--force", child).returncode == 0
    assert qemu_compare(expected, "raw", base, "vpc") == 0


def test_ctrl_c_leaves_the_chain_reading_the_same(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    expected = read_all(child)

    with pytest.raises(KeyboardInterrupt):
        merge(child, progress=ctrl_c_once_started)
    assert read_all(child) == expected
    merge(child)
    assert read_all(base) == expected


def test_refusals_change_nothing(tmp_path: Path) -> None:
    make_chain(tmp_path, 1)
    convert(tmp_path / "src.raw", tmp_path / "other.vhd")
    before = folder_digests(tmp_path)
    for args in (["base.vhd"], ["--into", "other.vhd", "layer1.vhd"], ["--into", "layer1.vhd", "layer1.vhd"],
                 ["missing.vhd"]):  # fmt: skip
        assert_clean_error(cli("merge", *args, cwd=tmp_path))
    assert folder_digests(tmp_path) == before


def test_merge_into_a_differencing_parent(tmp_path: Path) -> None:
    base, mid, top = make_chain(tmp_path, 2)
    expected = read_all(top)
    base_before = read_all(base)
    merge(top, delete_child=True)
    assert read_all(mid) == expected and read_all(base) == base_before  # only the target changed
    assert cli("check", mid).returncode == 0
