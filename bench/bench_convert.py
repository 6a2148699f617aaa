"""Benchmark: `vhdtool convert` against `qemu-img convert` on the same files, in the same run.

A 1 GiB raw disk, half allocated (4 MiB of data every 8 MiB, the rest holes), is converted
raw -> dynamic VHD, and dynamic VHDs -> raw (one laid out by qemu-img, one by vhdtool), by both
tools on the same files; so is a raw file of written zeros a quarter that size (every byte read
to find that there is nothing to write, as in a disk image copied with dd). Each conversion runs a few times
alternately (the first round warms the page cache and is not counted); the best time of each
tool is kept and the ratio vhdtool/qemu-img printed (target: <= 1.0), for wall time and for CPU
time (user + system of all threads), which a busy machine disturbs less. The tools are compared on
equal terms both ways: each one's default (neither flushes a new output), and with the output
flushed to the disk before the command returns (vhdtool --sync, qemu-img -t writeback).

    .venv/bin/python bench/bench_convert.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp] [--quick]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchtools import VHDTOOL, bench_parser, scratch_folder


def make_source(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.truncate(size)
        for start in range(0, size, 8 << 20):
            for i in range(4):
                f.seek(start + i * (1 << 20))
                f.write(chunk)


def _fresh(output: Path) -> None:
    if output.exists():
        output.unlink()
    subprocess.run(["sync"], check=True)  # no dirty pages of the last run left to write back


def timed(cmd: list[str], output: Path) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of one run of a command."""
    _fresh(output)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output.unlink()
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed_api(source: Path, output: Path, fmt: str) -> tuple[float, float]:
    """The same for a call of vhdtool.ops.convert.convert in this process (no interpreter start-up)."""
    from vhdtool.ops.convert import convert

    _fresh(output)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    convert(source, output, output_format=fmt)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    output.unlink()
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(w for w, _ in runs), min(c for _, c in runs)


def main() -> None:
    args = bench_parser(__doc__, size_mib=1024, quick="256 MiB, 2 rounds").parse_args()
    if args.quick:
        args.size_mib, args.rounds = 256, 2
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        sys.exit("qemu-img is not installed")
    work = scratch_folder("convert", args.dir)
    try:
        src = work / "src.raw"
        make_source(src, args.size_mib << 20)
        zeros = work / "zeros.raw"
        zeros.write_bytes(bytes(args.size_mib << 18))
        qemu_vhd, our_vhd = work / "qemu-made.vhd", work / "vhdtool-made.vhd"
        subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "vpc", src, qemu_vhd], check=True)
        subprocess.run([*VHDTOOL, "convert", "-q", src, our_vhd], check=True)
        # (source, qemu-img's -f, -O, output name); the same files for both tools
        cases = {
            "raw -> dynamic VHD": (src, "raw", "vpc", "out.vhd"),
            "qemu-img's VHD -> raw": (qemu_vhd, "vpc", "raw", "out.raw"),
            "vhdtool's VHD -> raw": (our_vhd, "vpc", "raw", "out.raw"),  # block data 4 KiB-aligned
            "written zeros -> raw": (zeros, "raw", "raw", "out.raw"),
        }
        print(f"{args.size_mib} MiB disk, {args.size_mib // 2} MiB allocated; best of {args.rounds} rounds")
        print("wall seconds (CPU seconds); 'cli' runs the vhdtool command, 'api' calls convert() in-process;")
        print("'default': neither tool flushes; 'flushed': qemu-img -t writeback vs vhdtool --sync")
        for name, (source, fmt_in, fmt_out, out_name) in cases.items():
            out = work / out_name
            ours = "raw" if fmt_out == "raw" else "vhd"
            qemu_cmd = [qemu_img, "convert", "-f", fmt_in, "-O", fmt_out, str(source), str(out)]
            cli_cmd = [*VHDTOOL, "convert", "-q", "-O", ours, str(source), str(out)]
            commands = {
                "qemu": qemu_cmd,
                "cli": cli_cmd,
                "qemu flushed": [*qemu_cmd[:2], "-t", "writeback", *qemu_cmd[2:]],
                "cli flushed": [*VHDTOOL, "convert", "-q", "--sync", "-O", ours, str(source), str(out)],
            }
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*commands, "api"]}
            for round_no in range(args.rounds + 1):
                runs = {k: timed(cmd, out) for k, cmd in commands.items()}
                runs["api"] = timed_api(source, out, ours)
                if round_no:  # round 0 warms the cache
                    for k, run in runs.items():
                        times[k].append(run)
            b = {k: best(v) for k, v in times.items()}
            (qw, qc), (cw, cc), (aw, ac) = b["qemu"], b["cli"], b["api"]
            (fqw, fqc), (fcw, fcc) = b["qemu flushed"], b["cli flushed"]
            print(
                f"{name:22s} default: qemu-img {qw:5.3f} ({qc:5.3f})  vhdtool cli {cw:5.3f} ({cc:5.3f}) "
                f"api {aw:5.3f} ({ac:5.3f})  ratio cli {cw / qw:4.2f}x ({cc / qc:4.2f}x) "
                f"api {aw / qw:4.2f}x ({ac / qc:4.2f}x)"
            )
            print(
                f"{'':22s} flushed: qemu-img {fqw:5.3f} ({fqc:5.3f})  vhdtool cli {fcw:5.3f} ({fcc:5.3f})  "
                f"ratio cli {fcw / fqw:4.2f}x ({fcc / fqc:4.2f}x)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
