"""Benchmark: committing a layer of written data into its base, against `qemu-img commit`.

- merge: a 2 GiB base with a child holding SIZE of random data (written through the API, in
  4 MiB requests), `vhdtool merge child.vhd`, against the same data in a qcow2 overlay (written
  by qemu-io) and `qemu-img commit -t writeback` (which flushes, as merge does).
- umount --commit: the same data written through `vhdtool mount --raw` (its undo disk), then
  `vhdtool umount --commit`, timed as a whole (unmount included); only when FUSE is usable.

Each case runs a few rounds, fresh layers every time; the best time of each is kept.

    .venv/bin/python bench/bench_commit.py [--size-mib 1024] [--rounds 3] [--dir DIR] [--json FILE] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from benchtools import bench_parser, scratch_folder, vhdtool_command

MiB = 1 << 20
CHUNK = 4 * MiB


def sh(*cmd: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(c) for c in cmd], check=True, capture_output=True)


def timed(*cmd: str | os.PathLike[str]) -> float:
    t0 = time.perf_counter()
    sh(*cmd)
    return time.perf_counter() - t0


def fill(path: Path, size: int, data: bytes) -> None:
    """``size`` bytes of ``data`` repeated, written through a file (a mount's disk file) with fsync."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, CHUNK):
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_round(work: Path, size: int, data: bytes) -> tuple[float, float]:
    import vhdtool.format.chain as chain

    ours = vhdtool_command()
    base, child = work / "base.vhd", work / "child.vhd"
    for p in (base, child):
        p.unlink(missing_ok=True)
    sh(*ours, "create", "--size", str(2 * size + 64 * MiB), base)
    sh(*ours, "create", "--parent", base, child)
    with chain.open_image(child, writable=True) as img:
        for offset in range(0, size, CHUNK):
            img.pwrite(offset, data)
        img.flush()
    sh("sync")  # the layers written above are on disk before either tool is timed
    a = timed(*ours, "merge", child)
    qbase, qchild = work / "base.qcow2", work / "child.qcow2"
    for p in (qbase, qchild):
        p.unlink(missing_ok=True)
    sh("qemu-img", "create", "-f", "qcow2", qbase, str(2 * size + 64 * MiB))
    sh("qemu-img", "create", "-f", "qcow2", "-b", qbase, "-F", "qcow2", qchild)
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P 7 0 {size}", qchild)
    sh("sync")
    b = timed("qemu-img", "commit", "-t", "writeback", qchild)
    return a, b


def umount_round(work: Path, size: int, data: bytes) -> float:
    ours = vhdtool_command()
    image, mnt = work / "mounted.vhd", work / "mnt"
    image.unlink(missing_ok=True)
    mnt.mkdir(exist_ok=True)
    sh(*ours, "create", "--size", str(2 * size + 64 * MiB), image)
    sh(*ours, "mount", "--raw", image, mnt)
    try:
        fill(mnt / "disk", size, data)
    except BaseException:
        sh(*ours, "umount", "--discard", mnt)
        raise
    return timed(*ours, "umount", "--commit", mnt)


def main() -> None:
    args = bench_parser(__doc__, size_mib=1024, figures=True, quick="256 MiB, 2 rounds").parse_args()
    if args.quick:
        args.size_mib, args.rounds = 256, 2
    size = args.size_mib * MiB
    data = os.urandom(CHUNK)
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M")
    work = scratch_folder("commit", args.dir)
    fuse = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
    try:
        merges = [merge_round(work, size, data) for _ in range(args.rounds)]
        umounts = [umount_round(work, size, data) for _ in range(args.rounds)] if fuse else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = min(m[0] for m in merges), min(m[1] for m in merges)
    print(f"{args.size_mib} MiB committed, best of {args.rounds} rounds; load average {load:.2f} at the start")
    print(f"  vhdtool merge           {a:7.3f} s   qemu-img commit -t writeback {b:7.3f} s   ratio {a / b:5.2f}x")
    rows = [{"work": "merge", "vhdtool": a, "qemu_img": b}]
    if umounts:
        u = min(umounts)
        print(f"  vhdtool umount --commit {u:7.3f} s   qemu-img commit -t writeback {b:7.3f} s   ratio {u / b:5.2f}x")
        rows.append({"work": "umount --commit", "vhdtool": u, "qemu_img": b})
    else:
        print("  umount --commit: not run (no /dev/fuse or fusermount3)")
    if args.json:
        doc = {"bench": "commit", "size_mib": args.size_mib, "date": started, "load": load,
               "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
