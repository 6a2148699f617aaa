"""Benchmark: `vhdtool build` against the manual pipeline, and the cost of the file commands' route.

Build: a folder of 2,000 files totalling 500 MiB (sizes spread from 1 KiB to 4 MiB over 40
folders) becomes an ext4 VHD, by `vhdtool build --fs ext4 --table gpt` and by the manual
pipeline `truncate` + `mke2fs -d` + `qemu-img convert -O vpc` + `rm` of the filesystem file at the
same filesystem size (both end with the VHD alone; vhdtool removes its temporary filesystem file
too). Both run a few times alternately; the best time of each is kept and the ratio printed
(target <= 1.2). vhdtool also fsyncs its output before renaming it into place; qemu-img does not.

File commands: each extracts the chosen partition to a sparse temporary file (only allocated,
non-zero pieces). Printed: the time of `vhdtool ls` and `vhdtool cat` of a 4 MiB file on the
built image, and of a `cp` in (which adds fsck and write-back), against the same debugfs call
on a raw copy of the filesystem (the tool's own time, the floor of any route).

    .venv/bin/python bench/bench_build.py [--files 2000] [--total-mib 500] [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchtools import VHDTOOL, bench_parser, scratch_folder


def make_tree(root: Path, files: int, total: int) -> None:
    """``files`` files over 40 folders whose sizes grow geometrically and add up to ``total``."""
    weights = [1.0 + (i % 50) ** 2 for i in range(files)]
    scale = total / sum(weights)
    block = os.urandom(1 << 20)
    for i, w in enumerate(weights):
        folder = root / f"d{i % 40:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = max(1024, int(w * scale))
        with open(folder / f"f{i:05d}.bin", "wb") as f:
            while size > 0:
                f.write(block[: min(size, len(block))])
                size -= len(block)


def timed(cmds: list[list[str]]) -> float:
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    for cmd in cmds:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return time.perf_counter() - t0


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--total-mib", type=int, default=500)
    args = ap.parse_args()
    work = scratch_folder("build", args.dir)
    try:
        src = work / "src"
        make_tree(src, args.files, args.total_mib << 20)
        from vhdtool.disk.fs.ext import ExtDriver
        from vhdtool.disk.fs.tree import scan

        fs_size = ExtDriver().estimate_size(scan(src))
        out, raw, manual = work / "out.vhd", work / "fs.raw", work / "manual.vhd"
        ours = [[*VHDTOOL, "build", str(out), "--from-dir", str(src), "--fs", "ext4", "--force"]]
        theirs = [
            ["rm", "-f", str(raw), str(manual)],
            ["truncate", "-s", str(fs_size), str(raw)],
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(raw)],
            ["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(raw), str(manual)],
            # the filesystem file is the pipeline's scratch, as vhdtool's is its own: both runs end
            # with only the VHD (freeing a large file's page cache takes time of its own)
            ["rm", "-f", str(raw)],
        ]
        best_ours, best_theirs = float("inf"), float("inf")
        for _ in range(args.rounds):
            best_ours = min(best_ours, timed(ours))
            best_theirs = min(best_theirs, timed(theirs))
        print(f"build of {args.files} files, {args.total_mib} MiB (ext4, {fs_size >> 20} MiB filesystem):")
        print(f"  vhdtool build                         {best_ours:7.2f} s")
        print(f"  truncate + mke2fs -d + qemu-img convert {best_theirs:5.2f} s")
        print(f"  ratio vhdtool/manual                  {best_ours / best_theirs:7.2f}  (target <= 1.20)")

        big = "/d09/f00049.bin"  # i=49: the largest size class, in folder 49 % 40
        print("file commands on the built image (each extracts the partition's data to a sparse temp file):")
        for label, cmd in (
            ("ls /", [*VHDTOOL, "ls", f"{out}:/"]),
            (f"cat {big}", [*VHDTOOL, "cat", f"{out}:{big}"]),
        ):
            t = min(timed([cmd]) for _ in range(args.rounds))
            print(f"  vhdtool {label:<28} {t:7.2f} s")
        t = min(timed([["debugfs", "-R", f"cat {big}", str(raw)]]) for _ in range(args.rounds))
        print(f"  debugfs cat on the raw filesystem    {t:7.2f} s  (the tool alone)")
        note = work / "note.txt"
        note.write_text("hello\n")
        t = timed([[*VHDTOOL, "cp", str(note), f"{out}:/note.txt"]])
        print(f"  vhdtool cp (in, fsck, write back)    {t:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
