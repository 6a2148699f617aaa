"""Benchmark: sequential 1 MiB reads of a 512 MiB dynamic VHD through `vhdtool.open().pread`,
against `dissect.hypervisor` (a read-only VHD reader) on the same image and plain `os.pread` of a
raw file with the same data, in the same run, alternating, several rounds; medians and ratios.

Targets (issue 2): vhdtool >= 1.2x dissect.hypervisor's throughput and >= 0.7x raw pread.

    .venv/bin/python bench/bench_read.py [--size-mib 512] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import vhdtool

CHUNK = 1 << 20


def make_image(folder: Path, size: int) -> tuple[Path, Path]:
    """A dynamic VHD fully written with random data (every block allocated) and its raw twin."""
    raw, vhd = folder / "data.raw", folder / "data.vhd"
    data = os.urandom(CHUNK)
    with open(raw, "wb") as f:
        for i in range(size // CHUNK):
            f.write(data[i % 7 :] + data[: i % 7])
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", raw, vhd], check=True)
    return raw, vhd


def read_vhdtool(path: Path, size: int) -> None:
    with vhdtool.open(path) as img:
        for off in range(0, size, CHUNK):
            img.pread(off, CHUNK)


def read_dissect(path: Path, size: int) -> None:
    from dissect.hypervisor.disk.vhd import VHD

    with open(path, "rb") as fh:
        disk = VHD(fh)
        for off in range(0, size, CHUNK):
            disk.seek(off)
            disk.read(CHUNK)


def read_raw(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, CHUNK):
            os.pread(fd, CHUNK, off)
    finally:
        os.close(fd)


def timed(fn: Callable[[Path, int], None], path: Path, size: int) -> float:
    t0 = time.perf_counter()
    fn(path, size)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="128 MiB, 3 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_mib, args.rounds = 128, 3
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        raw, vhd = make_image(Path(tmp), size)
        readers = {"vhdtool": (read_vhdtool, vhd), "dissect": (read_dissect, vhd), "raw pread": (read_raw, raw)}
        for fn, path in readers.values():  # warm the page cache
            fn(path, size)
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.rounds):
            for name, (fn, path) in readers.items():
                times[name].append(timed(fn, path, size))
    med = {name: statistics.median(t) for name, t in times.items()}
    mbps = {name: size / med[name] / 1e6 for name in med}
    print(f"sequential 1 MiB reads of a {args.size_mib} MiB dynamic VHD, median of {args.rounds} rounds")
    for name in readers:
        print(f"  {name:10s} {mbps[name]:8.0f} MB/s")
    print(f"  ratio vhdtool/dissect  {mbps['vhdtool'] / mbps['dissect']:.2f}x  (target >= 1.2)")
    print(f"  ratio vhdtool/raw      {mbps['vhdtool'] / mbps['raw pread']:.2f}x  (target >= 0.7)")


if __name__ == "__main__":
    sys.exit(main())
