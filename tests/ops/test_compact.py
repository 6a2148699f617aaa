"""`vhdtool compact`: zero blocks (dynamic) and parent-identical blocks (differencing) are given
back, the content stays identical for qemu-img and vhdtool, the file shrinks, check is clean."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import assert_clean_error, need, patch_footer, run
from tests.helpers import vhdtool as cli
from tests.ops.oputil import ctrl_c_once_started, folder_digests, qemu_compare, read_all
from vhdtool.format.rules import MiB
from vhdtool.ops.compact import compact


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    img = tmp_path / "d.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "force_size=on", img, "40M")
    run(need("qemu-io"), "-f", "vpc", *[a for i in range(10) for a in ("-c", f"write -P {i + 1} {4 * i}M 3M")], img)
    return img


def test_dynamic_zero_blocks(tmp_path: Path, dynamic: Path) -> None:
    with vhdtool.open(dynamic, writable=True) as img:
        img.pwrite(0, bytes(4 * MiB))  # blocks 0 and 1 now hold zeros
        img.pwrite(20 * MiB, bytes(3 * MiB))  # blocks 10 and 11 (23M-24M was never written)
        img.pwrite(24 * MiB, bytes(MiB))  # block 12 keeps 1M of data
    expected = tmp_path / "expected.raw"
    expected.write_bytes(read_all(dynamic))
    size = dynamic.stat().st_size
    doc = json.loads(cli("compact", "--json", dynamic).stdout)
    assert doc["dropped-blocks"] == 4 and doc["reclaimed-bytes"] == size - dynamic.stat().st_size >= 4 * 2 * MiB
    assert qemu_compare(expected, "raw", dynamic, "vpc") == 0
    assert cli("check", dynamic).returncode == 0
    again = compact(dynamic)  # nothing left to do
    assert (again.dropped_blocks, again.moved_blocks, again.reclaimed) == (0, 0, 0)


def test_differencing_blocks_equal_to_the_parent(tmp_path: Path, dynamic: Path) -> None:
    child = tmp_path / "c.vhd"
    vhdtool.create(child, parent=dynamic)
    with vhdtool.open(child, writable=True) as img:
        img.pwrite(4 * MiB, b"\x02" * MiB)  # what the parent holds already
        img.pwrite(11 * MiB, bytes(4096))  # parent reads zeros here too
        img.pwrite(12 * MiB, b"different")
        img.pwrite(16 * MiB, bytes(512))  # zeros over the parent's data: must stay
    expected = read_all(child)
    size = child.stat().st_size
    done = compact(child)
    assert done.dropped_blocks == 2 and child.stat().st_size == size - 2 * (2 * MiB + 512)
    assert read_all(child) == expected
    assert cli("check", child).returncode == 0


def test_children_keep_a_true_parent_time_stamp(tmp_path: Path, dynamic: Path) -> None:
    vhdtool.create(tmp_path / "c.vhd", parent=dynamic)  # records the parent's file time
    st = dynamic.stat()
    data = dynamic.read_bytes()
    dynamic.write_bytes(data[:-512] + bytes(3 * MiB) + data[-512:])  # room no BAT entry owns
    os.utime(dynamic, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert compact(dynamic).reclaimed == 3 * MiB  # the file changes, its content does not
    check = json.loads(cli("check", "--json", tmp_path / "c.vhd").stdout)
    assert check["findings"] == [], check


def test_leaked_space_is_reclaimed(dynamic: Path) -> None:
    data = dynamic.read_bytes()
    dynamic.write_bytes(data[:-512] + bytes(5 * MiB) + data[-512:])
    assert cli("check", dynamic).returncode == 3
    assert compact(dynamic).reclaimed == 5 * MiB
    assert dynamic.read_bytes() == data and cli("check", dynamic).returncode == 0


def test_ctrl_c_keeps_the_content(tmp_path: Path, dynamic: Path) -> None:
    with vhdtool.open(dynamic, writable=True) as img:
        for i in range(0, 40, 8):
            img.pwrite(i * MiB, bytes(2 * MiB))
    expected = read_all(dynamic)

    with pytest.raises(KeyboardInterrupt):
        compact(dynamic, progress=ctrl_c_once_started)
    assert read_all(dynamic) == expected
    assert cli("check", dynamic).returncode in (0, 3)  # at worst space not yet reclaimed
    compact(dynamic)
    assert read_all(dynamic) == expected and cli("check", dynamic).returncode == 0


def test_refusals_change_nothing(tmp_path: Path, dynamic: Path) -> None:
    vhdtool.create(tmp_path / "f.vhd", size=4 * MiB, type="fixed")
    saved = tmp_path / "saved.vhd"
    saved.write_bytes(dynamic.read_bytes())
    patch_footer(saved, saved_state=1)
    before = folder_digests(tmp_path)
    for name in ("f.vhd", "saved.vhd", "missing.vhd"):
        assert_clean_error(cli("compact", name, cwd=tmp_path))
    assert folder_digests(tmp_path) == before
