"""`vhdtool check`: clean images pass, each kind of damage is found and classified."""

from __future__ import annotations

import json
from pathlib import Path

import vhdtool
from tests.helpers import get_bat, patch_header, set_bat
from tests.helpers import vhdtool as cli
from vhdtool.format.rules import MiB


def _codes(img: Path) -> tuple[int, set[str]]:
    result = cli("check", "--json", img)
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    return result.returncode, {f["code"] for f in doc["findings"]}


def test_clean_images(tmp_path: Path, qemu_image: Path) -> None:
    assert _codes(qemu_image) == (0, set())
    vhdtool.create(tmp_path / "c.vhd", parent=qemu_image)
    with vhdtool.open(tmp_path / "c.vhd", writable=True) as c:
        c.pwrite(12345, b"x" * 100000)
    assert _codes(tmp_path / "c.vhd") == (0, set())
    vhdtool.create(tmp_path / "f.vhd", size=8 * MiB, type="fixed")
    assert _codes(tmp_path / "f.vhd") == (0, set())


def test_json_has_qemu_img_keys(qemu_image: Path) -> None:
    doc = json.loads(cli("check", "--json", qemu_image).stdout)
    for key in (
        "filename",
        "format",
        "check-errors",
        "corruptions",
        "leaks",
        "image-end-offset",
        "total-clusters",
        "allocated-clusters",
    ):
        assert key in doc
    assert doc["allocated-clusters"] == 4 and doc["total-clusters"] == 33  # qemu rounded 64M up to 67125248


def test_bat_entry_past_the_end(qemu_image: Path) -> None:
    set_bat(qemu_image, 30, 0x7FFFFFF0)
    code, codes = _codes(qemu_image)
    assert code == 2 and "bat-outside" in codes


def test_overlapping_blocks(qemu_image: Path) -> None:
    set_bat(qemu_image, 1, get_bat(qemu_image, 0) + 8)
    code, codes = _codes(qemu_image)
    assert code == 2 and "bat-overlap" in codes


def test_block_over_metadata(qemu_image: Path) -> None:
    set_bat(qemu_image, 3, 1)  # sector 1 is the dynamic header
    code, codes = _codes(qemu_image)
    assert code == 2 and "bat-overlap-metadata" in codes


def test_leaked_block_is_exit_3(qemu_image: Path) -> None:
    data = qemu_image.read_bytes()
    span = 512 + 2 * MiB
    qemu_image.write_bytes(data[:-512] + bytes(span) + data[-512:])  # room no BAT entry owns
    code, codes = _codes(qemu_image)
    assert (code, codes) == (3, {"leak"})
    vhdtool.open(qemu_image, writable=True).close_chain()  # leaks do not stop writers


def test_footer_copy_differs(qemu_image: Path) -> None:
    with open(qemu_image, "r+b") as f:
        raw = bytearray(f.read(512))
        raw[24] ^= 1  # timestamp
        from vhdtool.format.structs import vhd_checksum

        raw[64:68] = vhd_checksum(raw, 64).to_bytes(4, "big")
        f.seek(0)
        f.write(raw)
    code, codes = _codes(qemu_image)
    assert code == 2 and codes == {"footer-copy-differs"}


def test_header_checksum(qemu_image: Path) -> None:
    patch_header(qemu_image, 600, b"junk", fix_checksum=False)
    code, codes = _codes(qemu_image)
    assert code == 2 and "header-checksum" in codes


def test_bitmap_disagreeing_with_bat_is_a_warning(qemu_image: Path) -> None:
    with open(qemu_image, "r+b") as f:
        f.seek(get_bat(qemu_image, 0) * 512)
        f.write(bytes(512))  # allocated block, no sector marked present
    code, codes = _codes(qemu_image)
    assert code == 0 and codes == {"bitmap-empty"}
    with vhdtool.open(qemu_image) as img:
        assert img.pread(1 * MiB, 4096) == bytes(4096)  # honoured: reads zeros


def test_parent_problems(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB, overwrite=True)
    code, codes = _codes(tmp_path / "c.vhd")
    assert code == 2 and "parent" in codes
    (tmp_path / "p.vhd").unlink()
    code, codes = _codes(tmp_path / "c.vhd")
    assert code == 1 and "parent-missing" in codes  # cannot be checked, as qemu-img check says


def test_parent_timestamp_is_a_warning(tmp_path: Path) -> None:
    import os

    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    os.utime(tmp_path / "p.vhd", (1e9, 1e9))
    code, codes = _codes(tmp_path / "c.vhd")
    assert code == 0 and codes == {"parent-timestamp"}
    with vhdtool.open(tmp_path / "c.vhd") as c:
        assert any("modified" in w for w in c.all_warnings())
