"""Huge, nearly empty disks: map, compare, convert and check agree with qemu-img (and qemu's
qcow2 chains) at 2040 GiB, where a walk of every block would take seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, run
from tests.helpers import vhdtool as cli
from vhdtool.format.rules import GiB, MiB

QEMU_KEYS = ("start", "length", "depth", "present", "zero", "data", "offset")
SIZE = 2040 * GiB
# data at the start, in the middle (a partly written block), and in the last block of the disk
WRITES = [("1", 0, MiB), ("2", 1000 * GiB + 4096, 64 << 10), ("3", SIZE - 2 * MiB, 2 * MiB)]


def _qemu_io(path: Path, fmt: str, writes: list[tuple[str, int, int]]) -> None:
    cmds = [a for p, o, n in writes for a in ("-c", f"write -P {p} {o} {n}")]
    run(need("qemu-io"), "-f", fmt, *cmds, path)


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    img = tmp_path / "huge.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", img, str(SIZE))
    _qemu_io(img, "vpc", WRITES)
    return img


def test_map_of_a_2040_gib_disk_matches_qemu_img(huge: Path) -> None:
    ours = json.loads(cli("map", "--json", huge).stdout)
    theirs = json.loads(run(need("qemu-img"), "map", "-f", "vpc", "--output=json", huge).stdout)
    assert [{k: e[k] for k in QEMU_KEYS if k in e} for e in ours] == theirs
    assert sum(e["length"] for e in ours) == SIZE and len(ours) == 5


def test_compare_and_convert_of_a_2040_gib_disk_agree_with_qemu_img(tmp_path: Path, huge: Path) -> None:
    other = tmp_path / "other.vhd"
    run(need("qemu-img"), "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", other, str(SIZE))
    _qemu_io(other, "vpc", WRITES)
    assert cli("compare", huge, other).returncode == 0
    _qemu_io(other, "vpc", [("9", 1500 * GiB + 777, 1)])  # a byte where neither held data
    ours = cli("compare", huge, other)
    theirs = run(need("qemu-img"), "compare", "-f", "vpc", "-F", "vpc", huge, other, check=False)
    assert (ours.returncode, ours.stdout.strip()) == (theirs.returncode, theirs.stdout.strip())
    assert f"offset {1500 * GiB + 512}!" in ours.stdout
    raw = tmp_path / "huge.raw"
    cli("convert", "-O", "raw", huge, raw)
    assert run(need("qemu-img"), "compare", "-f", "raw", "-F", "vpc", raw, huge, check=False).returncode == 0
    # qemu allocates whole blocks and leaves their unwritten rest a hole in the file: only what was
    # written is copied (3 MiB and 64 KiB), not the three 2 MiB blocks
    assert raw.stat().st_blocks * 512 <= 4 * MiB
    assert cli("check", huge).returncode == 0


def test_a_chain_over_a_2040_gib_parent_reads_like_the_qcow2_chain(tmp_path: Path, huge: Path) -> None:
    child = tmp_path / "child.vhd"
    vhdtool.create(child, parent=huge)
    top = [("4", 2 * MiB, 2 * MiB), ("5", 1000 * GiB, 4096), ("6", SIZE - MiB, 4096)]
    with vhdtool.open(child, writable=True) as img:
        for pattern, offset, length in top:
            img.pwrite(offset, bytes([int(pattern)]) * length)
    base, over = tmp_path / "base.qcow2", tmp_path / "over.qcow2"
    run(need("qemu-img"), "create", "-q", "-f", "qcow2", base, str(SIZE))
    _qemu_io(base, "qcow2", WRITES)
    run(need("qemu-img"), "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", over)
    _qemu_io(over, "qcow2", top)
    theirs = tmp_path / "qemu.raw"  # the qcow2 chain as qemu reads it
    run(need("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", over, theirs)
    assert cli("compare", child, theirs).returncode == 0
    # which layer holds each run: the child's writes at depth 0, the parent's blocks around them at 1
    # (qemu-io allocates whole blocks, every sector present)
    doc = json.loads(cli("map", "--json", child).stdout)
    data = [(e["start"], e["length"], e["depth"]) for e in doc if e["data"]]
    assert data == [
        (0, 2 * MiB, 1),
        (2 * MiB, 2 * MiB, 0),
        (1000 * GiB, 4096, 0),
        (1000 * GiB + 4096, 2 * MiB - 4096, 1),
        (SIZE - 2 * MiB, MiB, 1),
        (SIZE - MiB, 4096, 0),
        (SIZE - MiB + 4096, MiB - 4096, 1),
    ]
    flat = tmp_path / "flat.raw"
    cli("convert", "-O", "raw", child, flat)
    assert run(need("qemu-img"), "compare", "-f", "raw", "-F", "qcow2", flat, over, check=False).returncode == 0
    _qemu_io(theirs, "raw", [("7", 1800 * GiB + 513, 1)])
    ours = cli("compare", child, theirs)
    peer = run(need("qemu-img"), "compare", "-f", "raw", "-F", "raw", flat, theirs, check=False)
    assert (
        (ours.returncode, ours.stdout.strip())
        == (peer.returncode, peer.stdout.strip())
        == (
            1,
            f"Content mismatch at offset {1800 * GiB + 512}!",
        )
    )


def test_merge_leaves_no_room_over_and_reads_as_the_chain_did(tmp_path: Path) -> None:
    base, child, flat = tmp_path / "base.vhd", tmp_path / "child.vhd", tmp_path / "flat.raw"
    vhdtool.create(base, size=64 * GiB)
    with vhdtool.open(base, writable=True) as img:
        img.pwrite(3 * MiB, b"b" * 4096)
    vhdtool.create(child, parent=base)
    with vhdtool.open(child, writable=True) as img:
        for i in range(40):  # 40 blocks spread over the disk, one of them already in the base
            img.pwrite(i * GiB + (3 * MiB if i == 0 else 0), bytes([i + 1]) * 65536)
    cli("convert", "-O", "raw", child, flat)
    assert cli("merge", child).returncode == 0
    assert cli("check", base).returncode == 0  # no room left over: a leak would exit 3
    assert run(need("qemu-img"), "compare", "-f", "raw", "-F", "vpc", flat, base, check=False).returncode == 0
    with vhdtool.open(base) as img:
        assert img.allocated_blocks() == 40
        assert base.stat().st_size == img.meta.footer_offset + 512
