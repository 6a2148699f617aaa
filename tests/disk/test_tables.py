"""MBR and GPT tables: what vhdtool writes is accepted by sfdisk/sgdisk, what they write vhdtool reads."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from vhdtool.disk.partitions import read_table, write_table
from vhdtool.disk.table import GPT_LINUX_FS, GPT_MS_BASIC_DATA, Partition
from vhdtool.errors import CorruptImageError, UsageError
from vhdtool.format.blockdev import RawFile

MiB = 1 << 20


def run(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def sparse_disk(tmp_path: Path, size: int = 64 * MiB) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def sfdisk_json(path: Path) -> dict:
    return json.loads(run("sfdisk", "--json", str(path)))["partitiontable"]


def test_written_gpt_is_what_sfdisk_and_sgdisk_read(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path)
    disk_guid, u1, u2 = (str(uuid.uuid4()) for _ in range(3))
    parts = [
        Partition(1, 1 * MiB, 20 * MiB, GPT_LINUX_FS, name="root", uuid=u1),
        Partition(2, 21 * MiB, 40 * MiB, GPT_MS_BASIC_DATA, name="dätä", uuid=u2),
    ]
    with RawFile(path, writable=True) as dev:
        write_table(dev, "gpt", parts, disk_guid)
    out = run("sgdisk", "-v", str(path))
    assert "No problems found" in out
    table = sfdisk_json(path)
    assert table["label"] == "gpt"
    assert table["id"].lower() == disk_guid
    got = [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p.get("name")) for p in table["partitions"]]
    assert got == [
        (2048, 40960, GPT_LINUX_FS, u1, "root"),
        (43008, 81920, GPT_MS_BASIC_DATA, u2, "dätä"),
    ]
    with RawFile(path) as dev:
        back = read_table(dev)
    assert back.scheme == "gpt" and back.disk_id == disk_guid and back.warnings == ()
    assert list(back.partitions) == parts


def test_written_mbr_is_what_sfdisk_reads(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path)
    parts = [
        Partition(1, 1 * MiB, 30 * MiB, "0x0c", bootable=True),
        Partition(3, 31 * MiB, 33 * MiB, "0x83"),
    ]
    with RawFile(path, writable=True) as dev:
        write_table(dev, "mbr", parts, "1234abcd")
    dump = run("sfdisk", "--dump", str(path))
    assert "label: dos" in dump and "label-id: 0x1234abcd" in dump
    assert f"{path}1 : start=        2048, size=       61440, type=c, bootable" in dump
    assert f"{path}3 : start=       63488, size=       67584, type=83" in dump
    with RawFile(path) as dev:
        back = read_table(dev)
    assert back.scheme == "mbr" and back.disk_id == "1234abcd"
    assert list(back.partitions) == parts


def test_reads_sfdisk_mbr_with_logical_partitions(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path)
    script = (
        "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40000, type=5\n"
        "start=24576, size=8192, type=83\nstart=34816, size=8192, type=7\n"
    )
    run("sfdisk", "-q", str(path), stdin=script)
    expected = [
        (int(p["node"].removeprefix(str(path))), p["start"], p["size"], int(p["type"], 16))
        for p in sfdisk_json(path)["partitions"]
    ]
    with RawFile(path) as dev:
        table = read_table(dev)
    assert table.scheme == "mbr"
    assert [(p.number, p.start // 512, p.size // 512, int(p.type, 16)) for p in table.partitions] == expected
    assert [p.number for p in table.partitions] == [1, 2, 5, 6]


def test_reads_sgdisk_gpt(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path)
    run("sgdisk", "-n", "1:2048:+10M", "-t", "1:8300", "-c", "1:boot", "-n", "3:0:+20M", "-t", "3:0700", str(path))
    expected = sfdisk_json(path)
    with RawFile(path) as dev:
        table = read_table(dev)
    assert table.scheme == "gpt" and table.disk_id == expected["id"].lower()
    got = [(p.number, p.start // 512, p.size // 512, p.type, p.uuid, p.name) for p in table.partitions]
    want = [
        (
            int(p["node"].removeprefix(str(path))),
            p["start"],
            p["size"],
            p["type"].lower(),
            p["uuid"].lower(),
            p.get("name", ""),
        )
        for p in expected["partitions"]
    ]
    assert got == want


def test_damaged_primary_gpt_falls_back_to_backup(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path)
    run("sgdisk", "-n", "1:2048:+10M", str(path))
    with RawFile(path) as dev:
        good = read_table(dev)
    with open(path, "r+b") as f:  # flip a byte inside the primary entry array
        f.seek(2 * 512 + 40)
        b = f.read(1)
        f.seek(2 * 512 + 40)
        f.write(bytes([b[0] ^ 0xFF]))
    with RawFile(path) as dev:
        table = read_table(dev)
    assert table.partitions == good.partitions
    assert any("primary GPT partition entries CRC32 mismatch" in w for w in table.warnings)
    with open(path, "r+b") as f:  # now damage the backup header too
        f.seek(64 * MiB - 512 + 20)
        f.write(b"\xff\xff")
    with RawFile(path) as dev, pytest.raises(CorruptImageError, match="primary GPT partition entries CRC32"):
        read_table(dev)


def test_blank_disk_has_no_table(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path, 4 * MiB)
    with RawFile(path) as dev:
        table = read_table(dev)
    assert table.scheme == "none"
    assert [(p.number, p.start, p.size) for p in table.partitions] == [(1, 0, 4 * MiB)]


def test_superfloppy_fat_is_not_mistaken_for_an_mbr(tmp_path: Path) -> None:
    path = sparse_disk(tmp_path, 8 * MiB)
    run("mkfs.vfat", str(path))
    with RawFile(path) as dev:
        assert read_table(dev).scheme == "none"


@pytest.mark.parametrize(
    "scheme, parts, message",
    [
        ("gpt", [Partition(1, 512, MiB, GPT_LINUX_FS, uuid=str(uuid.uuid4()))], "outside the usable LBAs"),
        ("gpt", [Partition(1, MiB, MiB, GPT_LINUX_FS)], "needs a unique GUID"),
        ("mbr", [Partition(1, MiB, 2 * MiB, "0x83"), Partition(2, 2 * MiB, MiB, "0x83")], "overlap"),
        ("mbr", [Partition(5, MiB, MiB, "0x83")], "not a free primary slot"),
        ("mbr", [Partition(1, MiB, 100 * MiB, "0x83")], "does not fit the disk"),
        ("zfs", [], "unknown partition table"),
    ],
)
def test_bad_layouts_are_refused(tmp_path: Path, scheme: str, parts: list[Partition], message: str) -> None:
    path = sparse_disk(tmp_path, 16 * MiB)
    with RawFile(path, writable=True) as dev, pytest.raises(UsageError, match=message):
        write_table(dev, scheme, parts, "00000000" if scheme == "mbr" else str(uuid.uuid4()))
    assert path.read_bytes() == bytes(16 * MiB)  # nothing written


def test_select_picks_the_first_partition_with_a_filesystem(tmp_path: Path) -> None:
    from vhdtool.disk.partitions import NoFilesystemError, partition_view, select

    path = sparse_disk(tmp_path)
    parts = [
        Partition(1, 1 * MiB, 8 * MiB, GPT_LINUX_FS, uuid=str(uuid.uuid4())),
        Partition(2, 9 * MiB, 20 * MiB, GPT_LINUX_FS, uuid=str(uuid.uuid4())),
    ]
    with RawFile(path, writable=True) as dev:
        write_table(dev, "gpt", parts, str(uuid.uuid4()))
    run("mke2fs", "-q", "-t", "ext4", "-E", f"offset={9 * MiB}", str(path), "20M")
    with RawFile(path) as dev:
        table = read_table(dev)
        part, fs = select(dev, table)
        assert part.number == 2 and fs.type == "ext4" and fs.size == 20 * MiB
        assert partition_view(dev, part).size == 20 * MiB
        with pytest.raises(NoFilesystemError, match="partition 1 holds no supported filesystem"):
            select(dev, table, 1)
        with pytest.raises(UsageError, match=r"no partition 9 \(partitions: 1, 2\)"):
            select(dev, table, 9)
