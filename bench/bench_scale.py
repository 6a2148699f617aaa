"""Benchmark: how the cost of walking a disk grows with its virtual size, against qemu-img.

A dynamic VHD (made by qemu-img, 2 MiB blocks) of each size from 1 GiB to 2040 GiB, empty and
"1% full" (every hundredth block allocated, 4 KiB written in it, by qemu-io), is mapped, compared
with itself and converted to raw by both tools on the same file, alternating rounds, best time
kept: `vhdtool map --json` vs `qemu-img map --output=json`, `vhdtool compare` vs `qemu-img
compare`, `vhdtool convert -O raw` vs `qemu-img convert -t writeback -O raw` (both flush the
output). `vhdtool check` is timed alone (qemu-img cannot check VHDs). Work that follows the
allocated blocks stays flat across the sizes of the empty disks; the whole command is timed, so
the interpreter's start-up is in every figure.

    .venv/bin/python bench/bench_scale.py [--sizes-gib 1 16 128 1024 2040] [--rounds 3] [--json FILE]
        [--filled-up-to-gib N] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchtools import bench_parser, scratch_folder, vhdtool_command

GiB = 1 << 30
BLOCK = 2 << 20
FILLS = {"empty": 0, "1% full": 100}
"""Fill name: one allocated block in every N (0: none)."""


def make_image(path: Path, size: int, every: int) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", path, str(size)], check=True
    )
    if not every:
        return
    writes = [a for b in range(0, size // BLOCK, every) for a in ("-c", f"write -q -P 7 {b * BLOCK} 4k")]
    subprocess.run(["qemu-io", "-f", "vpc", *writes, path], check=True, stdout=subprocess.DEVNULL)


def timed(cmd: list[str], out: Path | None) -> float:
    if out is not None and out.exists():
        out.unlink()
    t0 = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if result.returncode not in (0, 1):  # compare exits 1 on a difference, which is no failure here
        sys.exit(f"{' '.join(map(str, cmd))} failed: {result.stderr.strip()}")
    return elapsed


def race(ours: list[str], peer: list[str] | None, out: Path | None, rounds: int) -> tuple[float, float | None]:
    """Best wall time of each, alternating rounds after one warm-up run of each."""
    a, b = [], []
    for r in range(rounds + 1):
        ta = timed(ours, out)
        tb = timed(peer, out) if peer else None
        if r:
            a.append(ta)
            if tb is not None:
                b.append(tb)
    return min(a), (min(b) if b else None)


def commands(ours: list[str], img: Path, raw: Path) -> dict[str, tuple[list, list | None, Path | None]]:
    """Work name: (vhdtool's command, qemu-img's or None, the output file to remove before each run)."""
    qemu = ["qemu-img"]
    return {
        "map": ([*ours, "map", "--json", img], [*qemu, "map", "-f", "vpc", "--output=json", img], None),
        "compare": ([*ours, "compare", img, img], [*qemu, "compare", "-f", "vpc", "-F", "vpc", img, img], None),
        "convert": (
            [*ours, "convert", "-q", "-O", "raw", img, raw],
            [*qemu, "convert", "-t", "writeback", "-f", "vpc", "-O", "raw", img, raw],
            raw,
        ),
        "check": ([*ours, "check", img], None, None),
    }


def main() -> None:
    ap = bench_parser(__doc__, figures=True, quick="1, 64 and 2040 GiB (1%% full up to 64), 2 rounds")
    ap.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 16, 128, 1024, 2040])
    ap.add_argument("--filled-up-to-gib", type=int, default=2040, help="the largest size also run 1%% full")
    args = ap.parse_args()
    if args.quick:
        args.sizes_gib, args.rounds, args.filled_up_to_gib = [1, 64, 2040], 2, 64
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    ours = vhdtool_command()
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"best of {args.rounds} rounds, wall seconds, whole commands; load average {load:.2f} at the start")
    print(f"{'size':>9s} {'fill':8s} {'work':8s} {'vhdtool':>8s} {'qemu-img':>8s} {'ratio':>7s}")
    rows = []
    work = scratch_folder("scale", args.dir)
    try:
        for gib in args.sizes_gib:
            for fill, every in FILLS.items():
                if every and gib > args.filled_up_to_gib:
                    continue
                img, raw = work / "disk.vhd", work / "out.raw"
                make_image(img, gib * GiB, every)
                for name, (mine, peer, out) in commands(ours, img, raw).items():
                    a, b = race([str(c) for c in mine], [str(c) for c in peer] if peer else None, out, args.rounds)
                    ratio = f"{a / b:6.1f}x" if b else "      -"
                    peer_time = f"{b:8.3f}" if b else "       -"
                    print(f"{gib:6d} GiB {fill:8s} {name:8s} {a:8.3f} {peer_time} {ratio}", flush=True)
                    rows.append({"size_gib": gib, "fill": fill, "work": name, "vhdtool": a, "qemu_img": b})
                img.unlink()
                if raw.exists():
                    raw.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        doc = {"bench": "scale", "date": started, "load": load, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
