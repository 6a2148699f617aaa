"""The create/info/check commands as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import vhdtool
from tests.helpers import assert_clean_error
from tests.helpers import vhdtool as cli


def test_create_info_check_roundtrip(tmp_path: Path) -> None:
    img = tmp_path / "d.vhd"
    result = cli("create", "--size", "100M", "--block-size", "512K", img)
    assert result.returncode == 0, result.stderr
    assert "dynamic VHD of 100 MiB" in result.stdout
    doc = json.loads(cli("info", "--json", img).stdout)
    assert doc["format"] == "vpc" and doc["virtual-size"] == 100 << 20 and doc["cluster-size"] == 512 << 10
    data = doc["format-specific"]["data"]
    assert data["disk-type"] == "dynamic" and data["creator-application"] == "vhdt"
    assert data["footer-checksum"] == "ok" and data["footer-copy"] == "ok" and data["header-checksum"] == "ok"
    assert data["chs"]["cylinders"] == 65535  # CHS cannot say 100 MiB exactly: the maximum, size fields rule
    human = cli("info", img).stdout
    assert "100 MiB (104857600 bytes)" in human and "65535/16/255" in human
    assert cli("check", img).returncode == 0


def test_fixed_and_differencing_info(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    assert cli("create", "--type", "fixed", "--size", "8M", base).returncode == 0
    child = tmp_path / "sub" / "child.vhd"
    child.parent.mkdir()
    result = cli("create", "--parent", base, child, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["type"] == "differencing"
    chain = json.loads(cli("info", "--json", "--chain", child).stdout)
    assert [d["format-specific"]["data"]["disk-type"] for d in chain] == ["differencing", "fixed"]
    top = chain[0]
    assert Path(top["full-backing-filename"]) == base
    codes = {loc["code"]: loc["path"] for loc in top["format-specific"]["data"]["parent-locators"]}
    assert codes["W2ru"] == "..\\base.vhd" and codes["W2ku"] == str(base)
    assert "parent" in cli("info", child).stdout


def test_info_warns_on_damaged_footer_but_reads(tmp_path: Path) -> None:
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=4 << 20)
    with open(img, "r+b") as f:
        f.seek(-400, 2)
        f.write(b"x")
    result = cli("info", img)
    assert result.returncode == 0 and "warning" in result.stderr and "copy at offset 0" in result.stderr


def test_usage_errors_are_one_line_exit_64(tmp_path: Path) -> None:
    assert_clean_error(cli("create", "--type", "weird", tmp_path / "x.vhd"), 64)
    assert_clean_error(cli("info"), 64)
    assert_clean_error(cli("no-such-command"), 64)
