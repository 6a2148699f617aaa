"""Benchmark: `vhdtool convert` against `qemu-img convert` on the same files, in the same run.

A 1 GiB raw disk, half allocated (4 MiB of data every 8 MiB, the rest holes), is converted
raw -> dynamic VHD and a dynamic VHD -> raw by both tools. Each conversion runs a few times
alternately (the first round warms the page cache and is not counted); the best time of each
tool is kept and the ratio vhdtool/qemu-img printed (target: <= 1.0), for wall time and for CPU
time (user + system of all threads), which a busy machine disturbs less. Note that vhdtool
fsyncs its output before renaming it into place (crash safety) and qemu-img convert does not.

    .venv/bin/python bench/bench_convert.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VHDTOOL = [sys.executable, "-m", "vhdtool"]


def make_source(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.truncate(size)
        for start in range(0, size, 8 << 20):
            for i in range(4):
                f.seek(start + i * (1 << 20))
                f.write(chunk)


def timed(cmd: list[str], output: Path) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of one run."""
    if output.exists():
        output.unlink()
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output.unlink()
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the scratch files (default: $TMPDIR)")
    args = ap.parse_args()
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        sys.exit("qemu-img is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    try:
        src = work / "src.raw"
        make_source(src, args.size_mib << 20)
        vhd = work / "src.vhd"
        subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "vpc", src, vhd], check=True)
        cases = {
            "raw -> dynamic VHD": (
                [qemu_img, "convert", "-f", "raw", "-O", "vpc", str(src), str(work / "q.vhd")],
                [*VHDTOOL, "convert", "-q", str(src), str(work / "v.vhd")],
                (work / "q.vhd", work / "v.vhd"),
            ),
            "dynamic VHD -> raw": (
                [qemu_img, "convert", "-f", "vpc", "-O", "raw", str(vhd), str(work / "q.raw")],
                [*VHDTOOL, "convert", "-q", "-O", "raw", str(vhd), str(work / "v.raw")],
                (work / "q.raw", work / "v.raw"),
            ),
        }
        print(f"{args.size_mib} MiB disk, {args.size_mib // 2} MiB allocated; best of {args.rounds} rounds")
        for name, (qemu_cmd, our_cmd, (q_out, v_out)) in cases.items():
            q_runs, v_runs = [], []
            for round_no in range(args.rounds + 1):
                tq, tv = timed(qemu_cmd, q_out), timed(our_cmd, v_out)
                if round_no:  # round 0 warms the cache
                    q_runs.append(tq)
                    v_runs.append(tv)
            (qw, qc), (vw, vc) = min(q_runs), min(v_runs)
            qc, vc = min(c for _, c in q_runs), min(c for _, c in v_runs)
            print(
                f"{name:20s} qemu-img {qw:6.3f} s (cpu {qc:5.3f})   vhdtool {vw:6.3f} s (cpu {vc:5.3f})   "
                f"ratio {vw / qw:5.2f}x (cpu {vc / qc:4.2f}x)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
