"""Helpers for the image-operation tests: data layouts, peer comparisons, digests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import vhdtool
from tests.helpers import digest, need
from vhdtool.format.rules import MiB
from vhdtool.ops.convert import convert


def make_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    """A sparse raw file of ``size`` bytes with ``writes`` [(offset, data)] in it."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return path


def sample_raw(path: Path, size: int = 24 * MiB) -> Path:
    """Random data, a hole, an explicitly zero-filled region, odd-sized data near the end."""
    return make_raw(
        path,
        size,
        [
            (1 * MiB, os.urandom(3 * MiB)),
            (8 * MiB, bytes(4 * MiB)),  # allocated in the file but all zeros
            (13 * MiB + 4096, os.urandom(5000)),
            (size - 1536, os.urandom(1024)),
        ],
    )


def qemu_compare(a: Path, fmt_a: str, b: Path, fmt_b: str) -> int:
    """qemu-img compare's exit status: 0 identical, 1 different."""
    return subprocess.run(
        [need("qemu-img"), "compare", "-q", "-f", fmt_a, "-F", fmt_b, a, b], capture_output=True
    ).returncode


def ctrl_c_once_started(done: int, total: int) -> None:
    """A progress callback that delivers a real Ctrl-C (SIGINT to this process) once some work is done."""
    if done:
        os.kill(os.getpid(), signal.SIGINT)


def read_all(path: Path) -> bytes:
    """What vhdtool reads from a VHD (its chain included)."""
    with vhdtool.open(path) as img:
        return img.pread(0, img.size)


def folder_digests(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def make_chain(folder: Path, depth: int) -> list[Path]:
    """base.vhd (converted from a raw sample) and ``depth`` children, each with writes of its own."""
    paths = [folder / "base.vhd"]
    convert(sample_raw(folder / "src.raw"), paths[0])
    for level in range(1, depth + 1):
        paths.append(folder / f"layer{level}.vhd")
        vhdtool.create(paths[-1], parent=paths[-2])
        with vhdtool.open(paths[-1], writable=True) as img:
            img.pwrite(level * MiB + 1000, bytes([level]) * 70000)  # partial sectors, over parent data
            img.pwrite(9 * MiB + level * 4096, bytes(8192))  # zeros inside the zero-filled region
            img.pwrite(18 * MiB, bytes([0x40 + level]) * MiB)  # where nobody held data
    return paths
