"""A source folder for build/file-command tests, and readers that check images without vhdtool."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import digest, need, run, sha256_of

MiB = 1 << 20
NON_ASCII = "naïve-ünïcødé.txt"


def make_tree(root: Path, big: int = 50 * MiB) -> dict[str, str]:
    """Modes, owners, a symlink, a hard link, a 0-byte file, a big file, deep nesting, a non-ASCII name.
    Returns sha256 of the files whose contents tests compare."""
    (root / "etc/app").mkdir(parents=True)
    (root / "empty").mkdir()
    deep = root / "deep/a/b/c/d/e/f/g"
    deep.mkdir(parents=True)
    (root / "etc/app/app.conf").write_text("config\n")
    os.chmod(root / "etc/app/app.conf", 0o640)
    (root / "bin").mkdir()
    (root / "bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o755)
    os.chown(root / "bin/tool", 1234, 5678)
    (root / "zero").touch()
    (root / "big.bin").write_bytes(os.urandom(big))
    os.symlink("etc/app/app.conf", root / "link")
    os.link(root / "etc/app/app.conf", root / "hardlink")
    (deep / NON_ASCII).write_text("ünïcødé\n")
    return {
        "big.bin": digest(root / "big.bin"),
        "app.conf": sha256_of(b"config\n"),
    }


def to_raw(vhd: Path) -> Path:
    """The VHD as a raw file, converted by qemu-img (no vhdtool code involved)."""
    raw = vhd.with_suffix(".raw")
    run(need("qemu-img"), "convert", "-f", "vpc", "-O", "raw", vhd, raw)
    return raw


def first_partition(raw: Path) -> tuple[int, int]:
    """(offset, size) in bytes of partition 1, as sfdisk reads the table."""
    table = json.loads(run(need("sfdisk"), "--json", raw).stdout)["partitiontable"]
    p = table["partitions"][0]
    return p["start"] * 512, p["size"] * 512


def extract_partition(raw: Path) -> Path:
    """Partition 1 copied out with dd, for checkers without an offset option (fsck.fat, ntfs tools)."""
    off, size = first_partition(raw)
    part = raw.with_suffix(".p1")
    run(
        "dd",
        f"if={raw}",
        f"of={part}",
        "bs=1M",
        f"skip={off // MiB}",
        f"count={size // MiB}",
        "conv=sparse",
        "status=none",
    )
    return part


def debugfs(spec: str, request: str) -> str:
    return run(need("debugfs"), "-R", request, spec).stdout
