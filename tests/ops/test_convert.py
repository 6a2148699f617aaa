"""`vhdtool convert` against qemu-img: raw <-> VHD round trips, qemu-made images, chains, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, flushes, need, qemu_img_size, run, vhdiinfo_size
from tests.helpers import vhdtool as cli
from tests.ops.oputil import ctrl_c_once_started, digest, folder_digests, make_raw, qemu_compare, read_all, sample_raw
from vhdtool.format.rules import MiB
from vhdtool.ops.convert import convert
from vhdtool.ops.map import map_image


@pytest.mark.parametrize("vhd_type", ["dynamic", "fixed"])
def test_raw_to_vhd_and_back(tmp_path: Path, vhd_type: str) -> None:
    src = sample_raw(tmp_path / "src.raw")
    vhd = tmp_path / "out.vhd"
    result = cli("convert", "--type", vhd_type, src, vhd)
    assert result.returncode == 0, result.stderr
    assert qemu_compare(src, "raw", vhd, "vpc") == 0
    assert qemu_img_size(vhd) == vhdiinfo_size(vhd) == src.stat().st_size
    back = tmp_path / "back.raw"
    assert cli("convert", "-O", "raw", vhd, back).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    assert back.stat().st_blocks * 512 < 10 * MiB  # sparse: holes and zero runs are not written


def test_dynamic_output_has_no_block_for_zeros(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    vhd = tmp_path / "out.vhd"
    convert(src, vhd)
    with vhdtool.open(vhd) as img:
        # 2 MiB blocks: 1-4 MiB data -> blocks 0,1; 13 MiB -> block 6; the tail -> block 11
        assert [i for i, e in enumerate(img.bat) if e != 0xFFFFFFFF] == [0, 1, 6, 11]
    assert all(e.zero for e in map_image(vhd) if 8 * MiB <= e.offset < 12 * MiB)


@pytest.mark.parametrize(
    "options",
    [[], ["-o", "subformat=fixed"], ["-o", "force_size=on"]],
    ids=["dynamic", "fixed", "force-size"],
)
def test_images_qemu_made(tmp_path: Path, options: list[str]) -> None:
    img = tmp_path / "q.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", *options, img, "30M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0x11 2047K 2K",
        "-c", "write -z 1536K 64K", "-c", "write -P 0xa5 25M 512", img)  # fmt: skip
    raw = tmp_path / "v.raw"
    convert(img, raw, source_format="vhd")
    assert qemu_compare(raw, "raw", img, "vpc") == 0
    again = tmp_path / "v.vhd"
    convert(img, again, source_format="vhd", block_size=512 * 1024)
    assert qemu_compare(again, "vpc", img, "vpc") == 0


def test_chain_is_flattened(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    convert(sample_raw(tmp_path / "src.raw"), base)
    vhdtool.create(tmp_path / "child.vhd", parent=base)
    with vhdtool.open(tmp_path / "child.vhd", writable=True) as img:
        img.pwrite(2 * MiB - 100, b"child" * 100)
        img.pwrite(9 * MiB, bytes(MiB))
    expected = read_all(tmp_path / "child.vhd")
    out = tmp_path / "flat.vhd"
    convert(tmp_path / "child.vhd", out)
    assert read_all(out) == expected
    with vhdtool.open(out) as img:
        assert img.meta.type_name == "dynamic" and img.parent is None
    flat_raw = tmp_path / "flat.raw"
    flat_raw.write_bytes(expected)
    assert qemu_compare(flat_raw, "raw", out, "vpc") == 0


def test_pieces_starting_with_zeros(tmp_path: Path) -> None:
    """Zero checks look at the whole piece: data found late in a piece (after its first page,
    past its first quarter, in its last byte) is still copied, and a piece of written zeros is
    still left out."""
    piece = bytearray(4 * MiB)  # the source is written whole: four 4 MiB pieces of data to check
    src = tmp_path / "z.raw"
    with open(src, "wb") as f:
        for at in (None, 4096, 300 * 1024, 4 * MiB - 1):
            piece[:] = bytes(4 * MiB)
            if at is not None:
                piece[at] = 1
            f.write(piece)
    out = tmp_path / "out.raw"
    convert(src, out)
    assert out.read_bytes() == src.read_bytes()
    with open(out, "rb") as f:  # written pieces: the three with data, whole
        assert os.lseek(f.fileno(), 0, os.SEEK_DATA) == 4 * MiB
        assert os.lseek(f.fileno(), 4 * MiB, os.SEEK_HOLE) == 16 * MiB


def test_odd_sized_raw_is_rounded_to_a_sector(tmp_path: Path) -> None:
    src = make_raw(tmp_path / "odd.raw", 5 * MiB + 100, [(5 * MiB, b"\xee" * 100)])
    vhd = tmp_path / "odd.vhd"
    done = convert(src, vhd)
    assert done.size == 5 * MiB + 512
    assert read_all(vhd) == src.read_bytes() + bytes(412)


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    reports: list[tuple[int, int]] = []
    convert(src, tmp_path / "out.vhd", progress=lambda done, total: reports.append((done, total)))
    total = reports[-1][1]
    assert reports[0] == (0, total) and reports[-1] == (total, total) and total >= 3 * MiB


def test_ctrl_c_leaves_no_destination(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    before = folder_digests(tmp_path)

    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "out.vhd", progress=ctrl_c_once_started)
    assert folder_digests(tmp_path) == before  # no destination, no temporary file


def test_json_and_quiet(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    result = cli("convert", "--json", src, tmp_path / "a.vhd")
    doc = json.loads(result.stdout)
    assert doc["format"] == "vhd" and doc["type"] == "dynamic" and doc["size"] == src.stat().st_size
    assert result.stderr == ""
    result = cli("convert", "-q", src, tmp_path / "b.raw")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["missing.raw", "out.vhd"],
        ["src.raw", "exists.vhd"],  # refuses to overwrite without --force
        ["src.raw", "src.raw", "--force"],
        ["src.raw", "sub"],
        ["-O", "raw", "--type", "fixed", "src.raw", "out.raw"],
        ["--block-size", "3M", "src.raw", "out.vhd"],
        ["--block-size", "1M", "--type", "fixed", "src.raw", "out.vhd"],
        ["-f", "vhd", "src.raw", "out.vhd"],
    ],
)
def test_bad_input(tmp_path: Path, args: list[str]) -> None:
    make_raw(tmp_path / "src.raw", 4 * MiB, [(0, b"data")])
    (tmp_path / "exists.vhd").write_bytes(b"precious")
    (tmp_path / "sub").mkdir()
    before = folder_digests(tmp_path)
    assert_clean_error(cli("convert", *args, cwd=tmp_path))
    assert folder_digests(tmp_path) == before


def test_force_overwrites(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    (tmp_path / "out.vhd").write_bytes(b"old")
    assert cli("convert", "--force", src, tmp_path / "out.vhd").returncode == 0
    assert qemu_compare(src, "raw", tmp_path / "out.vhd", "vpc") == 0


def test_reproducible_with_id_and_time(tmp_path: Path) -> None:
    src = sample_raw(tmp_path / "src.raw")
    for name in ("a.vhd", "b.vhd"):
        convert(src, tmp_path / name, unique_id=bytes(range(16)), timestamp=1_700_000_000)
    assert digest(tmp_path / "a.vhd") == digest(tmp_path / "b.vhd")
    with vhdtool.open(tmp_path / "a.vhd") as img:
        assert img.meta.uuid.bytes == bytes(range(16))


@pytest.mark.parametrize("fmt", ["raw", "vhd"])
def test_flushed_where_a_power_cut_could_lose_the_old_file_or_when_asked(tmp_path: Path, fmt: str) -> None:
    src = sample_raw(tmp_path / "src.raw")
    out = tmp_path / f"out.{fmt}"
    # a new destination is left to the page cache, as qemu-img convert leaves it by default
    assert flushes(tmp_path, "convert", "-q", "-O", fmt, src, out) == ["rename"]
    assert qemu_compare(src, "raw", out, "raw" if fmt == "raw" else "vpc") == 0
    out.unlink()
    # --sync: the data reaches the disk before the name does, and the name after it
    synced = flushes(tmp_path, "convert", "-q", "--sync", "-O", fmt, src, out)
    assert synced[0] == "write-behind"  # the flush overlaps the copy
    synced = synced[1:]
    assert synced[1:] == ["rename", "fsync-folder"]
    assert synced[0].startswith(f"fsync .{out.name}.") and synced[0].endswith(".tmp")  # the temporary file
    # replacing a file: always flushed first, so a power cut leaves the old file or the new one
    out.write_bytes(b"old")
    replaced = flushes(tmp_path, "convert", "-q", "--force", "-O", fmt, src, out)
    assert replaced[0] == "write-behind"
    assert replaced[2:] == ["rename", "fsync-folder"] and replaced[1].startswith(f"fsync .{out.name}.")
    assert qemu_compare(src, "raw", out, "raw" if fmt == "raw" else "vpc") == 0


@pytest.mark.parametrize(("fmt", "vhd_type"), [("raw", None), ("vhd", "fixed")])
def test_an_empty_disk_converts_to_holes_only(tmp_path: Path, fmt: str, vhd_type: str | None) -> None:
    empty = tmp_path / "empty.vhd"
    vhdtool.create(empty, size=64 * MiB)
    out = tmp_path / f"out.{fmt}"
    done = convert(empty, out, output_format=fmt, disk_type=vhd_type)
    assert done.data_bytes == 0 and out.stat().st_blocks * 512 <= 64 << 10  # no data written, only a footer
    assert qemu_compare(empty, "vpc", out, "raw" if fmt == "raw" else "vpc") == 0
