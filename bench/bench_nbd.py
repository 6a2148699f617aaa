"""Benchmark: `vhdtool serve` against `qemu-nbd -f vpc` on the same 1 GiB dynamic VHD, same run.

Reads: `nbdcopy URI null:` of a fully allocated 1 GiB dynamic image (made by qemu-img/qemu-io,
every 64 MiB a different byte) from each server, both read-only on unix sockets. Writes:
`nbdcopy --flush RAW URI` of a 1 GiB raw file into a fresh empty dynamic image served writable by
each. Rounds alternate between the servers (the first read round warms the page cache and is
not counted); the best time of each is kept, and the throughput ratio vhdtool/qemu-nbd printed
(target for reads: >= 0.8). The servers' CPU time (user + system, all threads) is printed too:
on a machine shared with other work it is steadier than wall time.

    .venv/bin/python bench/bench_nbd.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp] [--reads-only]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from benchtools import VHDTOOL, bench_parser, scratch_folder


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Server:
    """One server process on a unix socket; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], sock: Path) -> None:
        self.name = name
        self.sock = sock
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"{name} did not start: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            time.sleep(0.05)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def copy(self, *args: str) -> tuple[float, float, float]:
        """Run nbdcopy with ``args``; returns (wall seconds, server CPU seconds, nbdcopy CPU seconds)."""
        cpu0 = cpu_seconds(self.proc.pid)
        client0 = _children_cpu()
        t0 = time.perf_counter()
        subprocess.run(["nbdcopy", *args], check=True)
        return time.perf_counter() - t0, cpu_seconds(self.proc.pid) - cpu0, _children_cpu() - client0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def vhdtool_server(image: Path, sock: Path, read_only: bool) -> Server:
    return Server("vhdtool", [*VHDTOOL, "serve", str(image), "--socket", str(sock)] + ["--read-only"] * read_only, sock)


def qemu_server(image: Path, sock: Path, read_only: bool) -> Server:
    # --shared: nbdcopy opens several connections; --persistent: survive between rounds
    argv = ["qemu-nbd", "-f", "vpc", "--shared=8", "--persistent", "-k", str(sock), str(image)]
    return Server("qemu-nbd", argv + ["--read-only"] * read_only, sock)


def make_images(work: Path, size_mib: int) -> tuple[Path, Path]:
    full, raw = work / "full.vhd", work / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "force_size=on", full, f"{size_mib}M"], check=True)
    writes = []
    for i in range(0, size_mib, 64):
        writes += ["-c", f"write -P {i // 64 % 255 + 1} {i}M {min(64, size_mib - i)}M"]
    subprocess.run(["qemu-io", "-f", "vpc", *writes, full], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", full, raw], check=True)
    return full, raw


def report(kind: str, size: int, results: dict[str, list[tuple[float, float, float]]]) -> None:
    best = {name: min(runs) for name, runs in results.items()}
    for name, (wall, cpu, client) in best.items():
        print(
            f"{kind:5} {name:8} {wall:6.2f} s  {size / wall / 2**20:7.0f} MiB/s  "
            f"server CPU {cpu:5.2f} s  nbdcopy CPU {client:5.2f} s"
        )
    ratio = best["qemu-nbd"][0] / best["vhdtool"][0]
    cpu_ratio = best["vhdtool"][1] / max(best["qemu-nbd"][1], 1e-9)
    print(f"{kind:5} throughput vhdtool/qemu-nbd = {ratio:.2f}x   (server CPU vhdtool/qemu-nbd = {cpu_ratio:.2f}x)")


def main() -> None:
    ap = bench_parser(__doc__, size_mib=1024)
    ap.add_argument("--reads-only", action="store_true", help="skip the write benchmark")
    args = ap.parse_args()
    for tool in ("nbdcopy", "qemu-nbd", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run fixtures/setup.sh")
    work = scratch_folder("nbd", args.dir)
    size = args.size_mib << 20
    try:
        full, raw = make_images(work, args.size_mib)
        servers = [vhdtool_server(full, work / "v.sock", True), qemu_server(full, work / "q.sock", True)]
        reads: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in servers}
        try:
            for rnd in range(args.rounds + 1):
                for s in servers:
                    result = s.copy(s.uri, "null:")
                    if rnd:
                        reads[s.name].append(result)
        finally:
            for s in servers:
                s.stop()
        report("read", size, reads)
        if args.reads_only:
            return

        writes: dict[str, list[tuple[float, float, float]]] = {"vhdtool": [], "qemu-nbd": []}
        for _ in range(args.rounds):
            for start in (vhdtool_server, qemu_server):
                target = work / "target.vhd"
                target.unlink(missing_ok=True)
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "vpc", "-o", "force_size=on", target, f"{args.size_mib}M"],
                    check=True,
                )
                s = start(target, work / "w.sock", False)
                try:
                    writes[s.name].append(s.copy("--flush", str(raw), s.uri))
                finally:
                    s.stop()
                got = subprocess.run(["qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", target, raw], check=False)
                if got.returncode != 0:
                    raise SystemExit(f"{s.name}: the written image differs from the source")
        report("write", size, writes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
