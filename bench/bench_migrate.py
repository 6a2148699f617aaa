"""Benchmark: `vhdtool migrate` (disks copied with the guest) against QEMU's own migration of the same
guest on shared storage (RAM and device state only), for 256 MiB and 1 GiB guests.

Each side keeps one guest running — the test guest (fixtures/guest.py) appending a counter to its
disk with sync every 0.2 s; the disk a 1 GiB ext4 image holding 64 MiB of random data — and moves it
to a new destination each round, on this host over a unix socket: vhdtool from runner to runner,
each new destination a new empty VHD that the mirror fills; the peer from one bare QEMU to the next,
both on the same raw file. Rounds alternate between the two sides. Printed per side: total time
(vhdtool: mirror + RAM + switch-over, from its --json; peer: from `migrate` to `completed`) and the
downtime QEMU measured, best and median; then the ratios vhdtool/peer. Both use downtime-limit 100
ms, no bandwidth cap and QEMU's return path. vhdtool's --json also gives switch_over_ms, the part of
the downtime spent ending the mirrors; its median is printed.

    .venv/bin/python bench/bench_migrate.py [--rounds 3] [--memory 256M 1G] [--disk 1G] [--data-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtools import VHDTOOL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.guest import Guest, ensure_guest, make_root  # noqa: E402
from vhdtool.run import host  # noqa: E402
from vhdtool.run.qmp import QmpClient  # noqa: E402

TICKER = "i=0; while true; do i=$((i+1)); echo tick $i >> /data; sync; echo tick $i; sleep 0.2; done"


def wait_for(path: Path, text: str, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while text not in (seen := path.read_text(errors="replace") if path.exists() else ""):
        if time.monotonic() > end:
            raise RuntimeError(f"no {text!r} in {path} within {seconds} s: {seen[-400:]}")
        time.sleep(0.1)


class Ours:
    """A guest under `vhdtool run`, moved with `vhdtool migrate` to a new runner each round."""

    def __init__(self, work: Path, guest: Guest, memory: str, image: Path, size: int) -> None:
        self.work, self.guest, self.memory, self.size = work, guest, memory, size
        self.env = {**os.environ, "VHDTOOL_STATE_DIR": str(work / "state")}
        self.round = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.switch_over: list[int] = []
        self.name = "g0"
        self._start(image, self.name, [])

    def _start(self, image: Path, name: str, extra: list[str]) -> None:
        args = ["--kernel", str(self.guest.kernel), "--initrd", str(self.guest.initrd), "--append", self.guest.append]
        with open(self.work / f"{name}.out", "wb") as out, open(self.work / f"{name}.err", "wb") as err:
            argv = [*VHDTOOL, "run", str(image), "--name", name, "-m", self.memory, *args, *extra]
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=err, env=self.env))

    def move(self) -> tuple[float, float]:
        self.round += 1
        name, sock = f"g{self.round}", self.work / f"m{self.round}.sock"
        image = self.work / f"{name}.vhd"
        subprocess.run([*VHDTOOL, "create", "--size", str(self.size), str(image)], check=True, capture_output=True)
        self._start(image, name, ["--incoming", f"unix:{sock}"])
        wait_for(self.work / f"{name}.err", "waiting for a migration")
        done = subprocess.run([*VHDTOOL, "migrate", self.name, "--to", f"unix:{sock}", "--json"],
                              capture_output=True, text=True, env=self.env)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"vhdtool migrate failed: {done.stderr}")
        self.name = name
        report = json.loads(done.stdout)
        self.switch_over.append(report["switch_over_ms"])
        return report["total_ms"] / 1000, report["downtime_ms"] / 1000

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


class Peer:
    """The same guest under bare QEMU on a raw file, moved with QMP `migrate` each round."""

    def __init__(self, work: Path, guest: Guest, memory: str, raw: Path, accel: str) -> None:
        self.work, self.round = work, 0
        append = f"{guest.append} tsc_early_khz={host.tsc_khz()}" if accel == "tcg" else guest.append
        self.argv = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-machine", "q35", "-accel", accel,
                     "-m", memory, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                     "-drive", f"file={raw},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
                     "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", append]  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []
        self.qmp = self._start([])

    def _start(self, extra: list[str]) -> Path:
        n = len(self.procs)
        qmp = self.work / f"p{n}.qmp"
        argv = [*self.argv, "-serial", f"file:{self.work / f'p{n}.out'}", "-qmp", f"unix:{qmp},server=on,wait=off"]
        self.procs.append(subprocess.Popen([*argv, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        end = time.monotonic() + 30
        while not qmp.exists() and time.monotonic() < end:
            time.sleep(0.05)
        return qmp

    def move(self) -> tuple[float, float]:
        self.round += 1
        sock = self.work / f"p{self.round}.sock"
        new_qmp = self._start(["-incoming", f"unix:{sock}"])
        end = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < end:
            time.sleep(0.02)
        result = asyncio.run(self._migrate(self.qmp, f"unix:{sock}"))
        self.procs[-2].wait(30)
        self.qmp = new_qmp
        return result

    async def _migrate(self, qmp_path: Path, uri: str) -> tuple[float, float]:
        qmp = await QmpClient.connect(str(qmp_path))
        try:
            await qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 100})
            # as vhdtool does: the source completes once the destination has loaded everything, so that
            # the downtime QEMU measures on both sides ends at the same point
            return_path = [{"capability": "return-path", "state": True}]
            await qmp.execute("migrate-set-capabilities", {"capabilities": return_path})
            t0 = time.perf_counter()
            await qmp.execute("migrate", {"uri": uri})
            while (info := await qmp.execute("query-migrate"))["status"] not in ("completed", "failed", "cancelled"):
                await asyncio.sleep(0.01)
            total = time.perf_counter() - t0
            if info["status"] != "completed":
                raise RuntimeError(f"QEMU migration {info['status']}: {info.get('error-desc')}")
            await qmp.execute("quit")
            return total, info["downtime"] / 1000
        finally:
            await qmp.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def summary(label: str, pairs: list[tuple[float, float]]) -> str:
    totals, downs = [p[0] for p in pairs], [p[1] * 1000 for p in pairs]
    return (
        f"{label}: total best {min(totals):.2f} s, median {statistics.median(totals):.2f} s; "
        f"downtime best {min(downs):.0f} ms, median {statistics.median(downs):.0f} ms  "
        f"(rounds: {', '.join(f'{t:.2f} s/{d:.0f} ms' for t, d in zip(totals, downs, strict=True))})"
    )


def bench(guest: Guest, memory: str, rounds: int, accel: str, disk: str, data_mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        work = Path(tmp)
        make_root(work / "root", TICKER)
        with open(work / "root" / "data.bin", "wb") as f:
            for _ in range(data_mib):
                f.write(os.urandom(1 << 20))
        image = work / "disk.vhd"
        subprocess.run([*VHDTOOL, "build", str(image), "--from-dir", str(work / "root"), "--table", "none",
                        "--size", disk], check=True, capture_output=True)  # fmt: skip
        raw = work / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(image), str(raw)], check=True)
        size = os.path.getsize(raw)
        ours = peer = None
        try:
            ours = Ours(work, guest, memory, image, size)
            peer = Peer(work, guest, memory, raw, accel)
            wait_for(work / "g0.out", "tick 3")
            wait_for(work / "p0.out", "tick 3")
            t_ours, t_peer = [], []
            for _ in range(rounds):
                t_peer.append(peer.move())
                t_ours.append(ours.move())
        finally:
            for side in (ours, peer):
                if side is not None:
                    side.stop()
    print(f"guest {memory}, disk {size >> 20} MiB with {data_mib} MiB of data:")
    print("  " + summary("QEMU migrate, shared raw disk  ", t_peer))
    print("  " + summary("vhdtool migrate, disk copied   ", t_ours))
    ratio_total = statistics.median(p[0] for p in t_ours) / statistics.median(p[0] for p in t_peer)
    ratio_down = statistics.median(p[1] for p in t_ours) / max(statistics.median(p[1] for p in t_peer), 1e-3)
    print(f"  vhdtool/QEMU medians: total {ratio_total:.2f}x, downtime {ratio_down:.2f}x")
    assert ours is not None
    ending = statistics.median(ours.switch_over)
    print(f"  vhdtool's switch-over (mirrors ending, guest stopped): median {ending:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", nargs="+", default=["256M", "1G"])
    ap.add_argument("--disk", default="1G", help="virtual size of the guest's disk")
    ap.add_argument("--data-mib", type=int, default=64, help="random data on it, MiB")
    args = ap.parse_args()
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("qemu-system-x86_64 is not installed")
    guest = ensure_guest()
    accel = host.choose("auto")
    print(f"accelerator: {accel.name} ({accel.reason}); load average {os.getloadavg()[0]:.1f}")
    for memory in args.memory:
        bench(guest, memory, args.rounds, accel.name, args.disk, args.data_mib)


if __name__ == "__main__":
    main()
