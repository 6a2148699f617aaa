"""Other formats in and out through qemu-img, and disks made or judged for Azure and Hyper-V.

The oracle is qemu-img reading the output, compared with what vhdtool reads from the source (a
chain flattened by vhdtool, since qemu's vpc driver ignores parents).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, run, vhdiinfo_size
from tests.helpers import vhdtool as cli
from tests.ops.oputil import make_chain, qemu_compare, read_all, sample_raw
from vhdtool.format.rules import MiB


def _qemu_read(path: Path, fmt: str, tmp: Path) -> bytes:
    out = tmp / f"{path.name}.qemu.raw"
    run(need("qemu-img"), "convert", "-f", fmt, "-O", "raw", path, out)
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vhdx", "vdi"])
def test_a_chain_goes_out_flattened(tmp_path: Path, fmt: str) -> None:
    *_, top = make_chain(tmp_path, 2)
    expected = read_all(top)
    out = tmp_path / f"flat.{fmt}"
    result = cli("convert", top, out)
    assert result.returncode == 0, result.stderr
    assert _qemu_read(out, fmt, tmp_path) == expected
    assert _qemu_read(top, "vpc", tmp_path) != expected  # what qemu-img alone makes of the child


def test_other_formats_come_in_as_vhd(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    for fmt in ("vhdx", "qcow2", "vmdk"):
        other = tmp_path / f"x.{fmt}"
        run(need("qemu-img"), "convert", "-f", "raw", "-O", fmt, src, other)
        for kind in ("dynamic", "fixed"):
            out = tmp_path / f"from-{fmt}-{kind}.vhd"
            result = cli("convert", "--type", kind, other, out)
            assert result.returncode == 0, result.stderr
            assert qemu_compare(other, fmt, out, "vpc") == 0
            assert read_all(out) == src.read_bytes()
            assert json.loads(cli("check", "--json", out).stdout)["corruptions"] == 0
    result = cli("convert", tmp_path / "x.qcow2", tmp_path / "back.vmdk")  # neither side a VHD
    assert result.returncode == 0 and qemu_compare(tmp_path / "x.qcow2", "qcow2", tmp_path / "back.vmdk", "vmdk") == 0


def test_formats_vhdtool_cannot_make_are_refused(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "d.vhd", size=4 * MiB)
    for args in (
        ["d.vhd", "out.avhdx"],
        ["d.vhd", "out.qcow"],
        ["-O", "qcow2", "--type", "fixed", "d.vhd", "out.qcow2"],
        ["-O", "bochs", "d.vhd", "out.img"],
        ["--for", "azure", "d.vhd", "out.qcow2"],
        ["--for", "azure", "--type", "dynamic", "d.vhd", "out.vhd"],
    ):
        assert_clean_error(cli("convert", *args, cwd=tmp_path), 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.vhd"]


def _footer(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        f.seek(-512, 2)
        foot = f.read(512)
    return struct.unpack(">Q", foot[48:56])[0], struct.unpack(">I", foot[60:64])[0]


def test_convert_for_azure_rounds_up_to_a_whole_mib(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw", size=24 * MiB + 12345)
    out = tmp_path / "az.vhd"
    result = cli("convert", "--for", "azure", src, out)
    assert result.returncode == 0, result.stderr
    size, disk_type = _footer(out)
    assert disk_type == 2 and size == 25 * MiB and out.stat().st_size == size + 512
    data = _qemu_read(out, "vpc", tmp_path)
    assert data[: src.stat().st_size] == src.read_bytes() and not any(data[src.stat().st_size :])
    checked = cli("check", "--for", "azure", out)
    assert checked.returncode == 0 and "azure takes this disk" in checked.stdout


def test_check_for_azure_names_each_reason(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "dyn.vhd", size=1000 * MiB)
    result = cli("check", "--for", "azure", tmp_path / "dyn.vhd")
    assert result.returncode == 1 and "fixed VHDs only" in result.stdout
    run(need("qemu-img"), "create", "-f", "vpc", "-o", "subformat=fixed", tmp_path / "q.vhd", "1000M")
    result = cli("check", "--for", "azure", tmp_path / "q.vhd")  # qemu rounds the size to CHS
    assert result.returncode == 1 and "whole number of MiB" in result.stdout
    doc = json.loads(cli("check", "--for", "azure", "--json", tmp_path / "q.vhd").stdout)
    assert doc["target-ok"] is False and len(doc["target-reasons"]) == 1
    run(need("qemu-img"), "create", "-f", "vpc", "-o", "subformat=fixed,force_size=on", tmp_path / "ok.vhd", "1000M")
    assert cli("check", "--for", "azure", tmp_path / "ok.vhd").returncode == 0


def test_hyper_v_block_sizes(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    result = cli("convert", "--for", "hyper-v", "--block-size", "1M", src, tmp_path / "odd.vhd")
    assert result.returncode == 0 and "not one Hyper-V offers" in result.stderr
    assert cli("check", "--for", "hyper-v", tmp_path / "odd.vhd").returncode == 1
    for kind in ("dynamic", "fixed"):
        out = tmp_path / f"ok-{kind}.vhd"
        args = ["--block-size", "512K"] if kind == "dynamic" else ["--type", "fixed"]
        result = cli("convert", "--for", "hyper-v", *args, src, out)
        assert result.returncode == 0 and "Hyper-V" not in result.stderr
        assert cli("check", "--for", "hyper-v", out).returncode == 0
        data = json.loads(cli("info", "--json", out).stdout)["format-specific"]["data"]
        creator = (data["creator-application"], data["creator-version"], data["creator-host-os"])
        assert creator == ("win ", "10.0", "Wi2k")
        assert data["chs"]["cylinders"] != 65535  # the spec's CHS, as Windows writes it
        assert qemu_compare(src, "raw", out, "vpc") == 0  # qemu 7.2 reads Current Size for 'win '
        assert vhdiinfo_size(out) == src.stat().st_size


def test_a_failed_qemu_img_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.qcow2").write_bytes(b"QFI\xfb" + bytes(4092))  # a qcow2 magic, nothing valid after it
    vhdtool.create(tmp_path / "d.vhd", size=4 * MiB)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_error(cli("convert", tmp_path / "bad.qcow2", tmp_path / "out.vhd"), 1)
    assert_clean_error(cli("convert", "-O", "qcow2", "-f", "vhd", tmp_path / "bad.qcow2", tmp_path / "o.qcow2"), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
