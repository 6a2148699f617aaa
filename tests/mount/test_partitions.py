"""GPT and MBR disks with two partitions, made with sfdisk and mkfs through the raw view; the
second partition mounted, changed and committed; sfdisk's own reading of the result says where
each partition is."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import need, run, vhdtool
from tests.mount import peers
from tests.mount.conftest import ok

SCRIPTS = {
    "gpt": "size=40MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nsize=+, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    "dos": "size=40MiB, type=c\nsize=+, type=83\n",
}


def sfdisk_partitions(raw: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition, as sfdisk reads the table."""
    table = json.loads(run(need("sfdisk"), "-J", raw).stdout)["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_mount_the_second_of_two_partitions(label: str, mnt: Path, tmp_path: Path) -> None:
    image = tmp_path / "two.vhd"
    ok("create", "--size", "96M", image)
    ok("mount", "--raw", "--no-undo", image, mnt)
    assert sorted(os.listdir(mnt)) == ["disk"]  # no table yet: no partition files
    subprocess.run(
        [need("sfdisk"), "-q", "-X", label, mnt / "disk"],
        input=SCRIPTS[label],
        text=True,
        check=True,
        capture_output=True,
    )
    assert sorted(os.listdir(mnt)) == ["disk", "p1", "p2"]  # the view read the new table at once
    run(need("mkfs.vfat"), "-F", "32", mnt / "p1")
    run(need("mkfs.ext4"), "-q", "-F", mnt / "p2")
    sizes = [os.path.getsize(mnt / "p1"), os.path.getsize(mnt / "p2")]
    ok("umount", mnt)

    raw = peers.to_raw(image, tmp_path / "before.raw")
    layout = sfdisk_partitions(raw)
    assert [size for _, size in layout] == sizes

    first = json.loads(ok("mount", "--json", image, mnt).stdout)
    assert (first["partition"], first["fs"]) == (1, "fat32")  # the default: the first with a filesystem
    ok("umount", "--discard", mnt)

    second = json.loads(ok("mount", "--json", "--partition", "2", image, mnt).stdout)
    assert (second["partition"], second["fs"]) == (2, "ext4")
    (mnt / "etc").mkdir()
    (mnt / "etc" / "app.conf").write_text("second partition\n")
    ok("umount", "--commit", mnt)

    raw = peers.to_raw(image, tmp_path / "after.raw")
    assert sfdisk_partitions(raw) == layout
    p1 = peers.cut(raw, *layout[0], tmp_path / "p1.raw")
    p2 = peers.cut(raw, *layout[1], tmp_path / "p2.raw")
    assert peers.cat("ext4", p2, "/etc/app.conf") == b"second partition\n"
    assert peers.fsck_clean("ext4", p2)[0]
    assert peers.names("fat32", p1) == set()  # the first partition was not touched
    assert peers.fsck_clean("fat32", p1)[0]

    missing = vhdtool("mount", "--partition", "3", image, mnt)
    assert missing.returncode == 64 and "no partition 3 (partitions: 1, 2)" in missing.stderr
    assert os.listdir(mnt) == []
