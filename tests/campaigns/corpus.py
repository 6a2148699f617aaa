"""Seed images for the fuzz and fault campaigns: every kind and creator the tests know, built on
the spot by the real peers (qemu-img, qemu-io) and by the layout factory, chains included."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import vhdtool
from tests.imagefactory import Layout, build, footer_uuid

MiB = 1 << 20


@dataclass(frozen=True)
class Seed:
    name: str
    path: Path
    """The image to mutate; any parents it needs sit beside it, untouched by mutations."""


def _qemu(folder: Path, name: str, options: list[str], size: str) -> Path:
    path = folder / f"{name}.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", *options, str(path), size], check=True)
    subprocess.run(
        ["qemu-io", "-f", "vpc", "-c", "write -P 0x5a 0 70K", "-c", "write -P 0xa5 2500K 5K", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def build_corpus(folder: Path) -> list[Seed]:
    """Small images (a few MiB at most) so that one execution stays around a millisecond."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [
        Seed("qemu-dynamic", _qemu(folder, "qemu-dynamic", [], "4M")),
        Seed("qemu-fixed", _qemu(folder, "qemu-fixed", ["-o", "subformat=fixed"], "3M")),
        Seed("qemu2-dynamic", _qemu(folder, "qemu2-dynamic", ["-o", "force_size=on"], "5M")),
    ]
    own = folder / "vhdtool-dynamic.vhd"
    vhdtool.create(own, size=6 * MiB, block_size=512 * 1024)
    with vhdtool.open(own, writable=True) as img:
        img.pwrite(100, b"vhdtool" * 1000)
        img.pwrite(5 * MiB, b"end" * 100)
    seeds.append(Seed("vhdtool-dynamic", own))
    base = folder / "chain-base.vhd"
    shutil.copy(own, base)
    mid = folder / "chain-mid.vhd"
    vhdtool.create(mid, parent=base)
    with vhdtool.open(mid, writable=True) as img:
        img.pwrite(3000, b"mid" * 3000)
    top = folder / "chain-top.vhd"
    vhdtool.create(top, parent=mid)
    with vhdtool.open(top, writable=True) as img:
        img.pwrite(1 * MiB + 7, b"top" * 300)
    seeds.append(Seed("differencing", top))
    win = folder / "windows10.vhd"
    build(win, Layout(size=4 * MiB), {1: b"\x42" * (2 * MiB)})
    seeds.append(Seed("windows10", win))
    d2v = folder / "disk2vhd.vhd"
    bitmap = b"\xa0" + bytes(99) + b"\xff" + bytes(411)
    build(d2v, Layout(size=4 * MiB, creator=b"d2v "), {0: b"\x77" * (2 * MiB)}, {0: bitmap})
    seeds.append(Seed("disk2vhd", d2v))
    vpc_child = folder / "vpc-child.vhd"
    windows_name = "C:\\x\\vhdtool-dynamic.vhd"
    build(
        vpc_child,
        Layout(
            size=6 * MiB,
            disk_type=4,
            bitmap_fill=0,
            parent_uuid=footer_uuid(own),
            parent_name=windows_name,
            locators=[(4, b"Wi2r", b".\\vhdtool-dynamic.vhd", 1), (5, b"W2ku", windows_name.encode("utf-16-le"), 1)],
        ),
        {2: b"\x13" * (2 * MiB)},
        {2: b"\xf0" + bytes(511)},
    )
    seeds.append(Seed("virtualpc-child", vpc_child))
    old = folder / "short-footer.vhd"
    data = (folder / "qemu-dynamic.vhd").read_bytes()
    old.write_bytes(data[:-1])
    seeds.append(Seed("511-byte-footer", old))
    return seeds
