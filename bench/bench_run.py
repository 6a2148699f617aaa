"""Benchmark: boot-to-marker time of `vhdtool run` against bare `qemu-system-x86_64`, same run.

The test guest (fixtures/guest.py) boots an ext4 image whose /sbin/init prints a marker. vhdtool
boots a differencing VHD over a dynamic VHD, served by its NBD server; bare QEMU boots a raw copy
of the same disk with its own virtio-blk backend. Both use the same kernel, initramfs, command
line (tsc_early_khz included), machine (q35), memory and accelerator (the one `--accel auto`
picks here). Each side is timed from process start to the marker on the console — for vhdtool
that includes Python starting, the host probe, opening the chain and the NBD handshake — in
alternating rounds. The ratio vhdtool/bare of the best times is the headline (target <= 1.1): a
TCG boot is CPU-bound, and on a shared machine the best of a few rounds is the one least
disturbed by other work; the medians are printed beside it.

    .venv/bin/python bench/bench_run.py [--rounds 5]
"""

from __future__ import annotations

import argparse
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

from fixtures.guest import ensure_guest, make_root  # noqa: E402
from vhdtool.run import host  # noqa: E402

MARKER = b"BENCH-MARKER-"


def time_to_marker(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``cmd`` to the marker on its stdout; the process is then stopped."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    seen = b""
    try:
        while MARKER not in seen:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"{cmd[0]} stopped before the marker: {seen[-400:]!r}")
            seen = seen[-4096:] + chunk
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 is not installed")
    guest = ensure_guest()
    accel = host.choose("auto")
    append = f"console=ttyS0 root=/dev/vda panic=-1 quiet tsc_early_khz={host.tsc_khz()}"
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        work = Path(tmp)
        make_root(work / "root", f'echo "{MARKER.decode()}$(cat /proc/uptime)"; while true; do sleep 1; done')
        subprocess.run([*VHDTOOL, "build", work / "base.vhd", "--from-dir", work / "root", "--table", "none"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([*VHDTOOL, "create", "--parent", work / "base.vhd", work / "child.vhd"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", work / "base.vhd", work / "copy.raw"],
                       check=True)  # fmt: skip
        env = {**os.environ, "VHDTOOL_STATE_DIR": str(work / "state")}
        ours = [*VHDTOOL, "run", str(work / "child.vhd"), "--accel", accel.name, "--kernel", str(guest.kernel),
                "--initrd", str(guest.initrd), "--append", append]  # fmt: skip
        bare = [qemu, "-machine", "q35", "-accel", accel.name, "-m", "512M", "-smp", "1", "-nodefaults",
                "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
                "-drive", f"file={work / 'copy.raw'},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
                "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", append]  # fmt: skip
        if accel.name == "kvm":
            bare[1:1] = ["-cpu", "host"]
        time_to_marker(bare, env)  # warm the page cache for both: kernel, initramfs, disk
        time_to_marker(ours, env)
        t_ours, t_bare = [], []
        for _ in range(args.rounds):
            t_bare.append(time_to_marker(bare, env))
            t_ours.append(time_to_marker(ours, env))
    print(f"accelerator: {accel.name} ({accel.reason}); load average {os.getloadavg()[0]:.1f}")
    for label, times in (("bare qemu-system-x86_64, raw copy", t_bare), ("vhdtool run, VHD chain over NBD ", t_ours)):
        rounds = ", ".join(f"{t:.2f}" for t in times)
        print(f"{label}: best {min(times):.2f} s, median {statistics.median(times):.2f} s  ({rounds})")
    print(
        f"boot-to-marker vhdtool/bare: best {min(t_ours) / min(t_bare):.2f}x (target <= 1.1), "
        f"median {statistics.median(t_ours) / statistics.median(t_bare):.2f}x"
    )


if __name__ == "__main__":
    main()
