"""`vhdtool map` against `qemu-img map`, `vhdtool compare` against `qemu-img compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, run
from tests.helpers import vhdtool as cli
from tests.ops.oputil import make_raw, sample_raw
from vhdtool.format.rules import MiB
from vhdtool.ops.compare import compare
from vhdtool.ops.convert import convert

QEMU_KEYS = ("start", "length", "depth", "present", "zero", "data", "offset")


@pytest.fixture
def qemu_image(tmp_path: Path) -> Path:
    img = tmp_path / "q.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", img, "20M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 1 0 1M", "-c", "write -P 2 5M 512",
        "-c", "write -P 3 6M 2M", img)  # fmt: skip
    return img


def test_map_json_and_text_match_qemu_img(qemu_image: Path) -> None:
    assert cli("map", qemu_image).stdout == run(need("qemu-img"), "map", "-f", "vpc", qemu_image).stdout
    ours = json.loads(cli("map", "--json", qemu_image).stdout)
    theirs = json.loads(run(need("qemu-img"), "map", "-f", "vpc", "--output=json", qemu_image).stdout)
    assert [{k: e[k] for k in QEMU_KEYS if k in e} for e in ours] == theirs
    assert {e["file"] for e in ours if e["data"]} == {str(qemu_image)}


def test_map_names_the_layer_holding_each_run(tmp_path: Path, qemu_image: Path) -> None:
    child = tmp_path / "c.vhd"
    vhdtool.create(child, parent=qemu_image)
    with vhdtool.open(child, writable=True) as img:
        img.pwrite(6 * MiB + 4096, b"c" * 8192)
    doc = json.loads(cli("map", "--json", child).stdout)
    hit = [e for e in doc if e["start"] <= 6 * MiB + 4096 < e["start"] + e["length"]]
    assert hit[0]["depth"] == 0 and hit[0]["file"] == str(child) and hit[0]["length"] == 8192
    assert any(e["depth"] == 1 and e["data"] and e["file"].endswith("q.vhd") for e in doc)
    with vhdtool.open(child) as img:
        assert sum(e["length"] for e in doc) == img.size  # the runs tile the whole disk
    table = cli("map", child).stdout.splitlines()
    assert table[0].split() == ["Offset", "Length", "Mapped", "to", "File"]
    assert any(line.startswith(f"{6 * MiB + 4096:#x} ") and line.endswith(str(child)) for line in table)


def _qemu_compare_output(a: Path, fa: str, b: Path, fb: str) -> tuple[int, str]:
    r = run(need("qemu-img"), "compare", "-f", fa, "-F", fb, a, b, check=False)
    return r.returncode, r.stdout.strip()


def test_compare_agrees_with_qemu_img(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    vhd = tmp_path / "a.vhd"
    convert(src, vhd)
    assert cli("compare", src, vhd).returncode == 0
    with vhdtool.open(vhd, writable=True) as img:
        img.pwrite(13 * MiB + 4096 + 777, b"!")  # one byte inside existing data
    code, text = _qemu_compare_output(src, "raw", vhd, "vpc")
    ours = cli("compare", src, vhd)
    assert (
        (ours.returncode, ours.stdout.strip())
        == (code, text)
        == (1, f"Content mismatch at offset {13 * MiB + 4096 + 512}!")
    )
    with vhdtool.open(vhd, writable=True) as img:
        img.pwrite(10 * MiB, b"?")  # inside a run that is zero on both sides before
    result = compare(src, vhd)
    assert not result.identical and result.offset == 10 * MiB


def test_size_mismatch(tmp_path: Path) -> None:
    small = make_raw(tmp_path / "small.raw", 4 * MiB, [(0, b"x" * 4096)])
    big = make_raw(tmp_path / "big.raw", 6 * MiB, [(0, b"x" * 4096)])
    code, text = _qemu_compare_output(small, "raw", big, "raw")
    ours = cli("compare", small, big)
    assert (ours.returncode, ours.stdout.strip()) == (code, text)
    assert cli("compare", "--strict", small, big).returncode == 1
    make_raw(big, 6 * MiB, [(0, b"x" * 4096), (5 * MiB, b"tail")])
    code, text = _qemu_compare_output(small, "raw", big, "raw")
    ours = cli("compare", small, big)
    assert (ours.returncode, ours.stdout.strip()) == (code, text) and code == 1


def test_compare_errors_exit_2(tmp_path: Path) -> None:
    make_raw(tmp_path / "a.raw", MiB, [])
    result = cli("compare", tmp_path / "a.raw", tmp_path / "missing.vhd")
    assert_clean_error(result, code=2)
    result = cli("compare", "-F", "vhd", tmp_path / "a.raw", tmp_path / "a.raw")
    assert_clean_error(result, code=2)


def test_compare_json(tmp_path: Path) -> None:
    a = make_raw(tmp_path / "a.raw", MiB, [(4096, b"a")])
    b = make_raw(tmp_path / "b.raw", MiB, [(4096, b"b")])
    doc = json.loads(cli("compare", "--json", a, b).stdout)
    assert doc["identical"] is False and doc["offset"] == 4096
