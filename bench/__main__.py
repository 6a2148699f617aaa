"""Run every benchmark: `python -m bench [--quick] [--only NAME ...] [--plot DIR]`.

Each benchmark makes its own data, runs vhdtool and its peers on the same data in the same run,
alternating rounds, and prints its figures and the ratio vhdtool/peer. `--quick` uses small
data and few rounds (the whole set in about two minutes); without it, the sizes the issues name.
The peers come from `bash fixtures/setup.sh` (Debian packages, and the `bench` extra for
dissect.hypervisor); a benchmark whose peers are missing is not run, and says which are.
`--plot DIR` keeps the figures of the size sweep and the commit case as JSON in DIR and draws
them there as PNG pictures (matplotlib, in the `bench` extra); `python -m bench.plot DIR`
draws them again from the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "read": ([], ["--quick"]),
    "convert": ([], ["--size-mib", "256", "--rounds", "2"]),
    "nbd": ([], ["--size-mib", "256", "--rounds", "2"]),
    "mount": ([], ["--quick"]),
    "build": ([], ["--files", "400", "--total-mib", "100", "--rounds", "2"]),
    "run": ([], ["--rounds", "2"]),
    "snapshot": ([], ["--rounds", "2"]),
    "migrate": ([], ["--rounds", "2", "--memory", "256M"]),
    "scale": ([], ["--quick"]),
    "commit": ([], ["--quick"]),
}
PLOTTED = ("scale", "commit")
"""Benchmarks that write their figures as JSON for --plot."""


# name: (programs, Python modules) the benchmark runs besides vhdtool: its peers and tools
PEERS: dict[str, tuple[list[str], list[str]]] = {
    "read": ([], ["dissect.hypervisor"]),
    "convert": (["qemu-img", "qemu-io"], []),
    "nbd": (["qemu-img", "qemu-io", "qemu-nbd", "nbdcopy"], []),
    "mount": (["qemu-img", "vhdimount", "losetup", "mkfs.ext4", "fuse2fs", "fusermount3"], ["mfusepy"]),
    "build": (["qemu-img", "mke2fs", "debugfs", "truncate"], []),
    "run": (["qemu-system-x86_64", "qemu-img"], []),
    "snapshot": ([], []),
    "migrate": (["qemu-system-x86_64", "qemu-img"], []),
    "scale": (["qemu-img", "qemu-io"], []),
    "commit": (["qemu-img", "qemu-io"], []),
}
SETUP = "bash fixtures/setup.sh"


def missing_peers(name: str) -> list[str]:
    programs, modules = PEERS[name]
    gone = [p for p in programs if shutil.which(p) is None]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            gone.append(f"python module {module}")
    return gone


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{platform.node()}: {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run only these")
    ap.add_argument("--plot", metavar="DIR", help=f"write the figures of {', '.join(PLOTTED)} to DIR and draw them")
    args = ap.parse_args(argv)
    if args.plot:
        os.makedirs(args.plot, exist_ok=True)
    print(f"vhdtool benchmarks, {time.strftime('%Y-%m-%d %H:%M')} on {machine()}", flush=True)
    failed = []
    for name in args.only or BENCHMARKS:
        full, quick = BENCHMARKS[name]
        gone = missing_peers(name)
        if gone:
            print(f"\n== {name}: not run, missing {', '.join(gone)} (install them with '{SETUP}')", flush=True)
            failed.append(name)
            continue
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(quick if args.quick else full)]
        if args.plot and name in PLOTTED:
            cmd += ["--json", os.path.join(args.plot, f"{name}.json")]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        result = subprocess.run(cmd, cwd=HERE.parent)
        print(f"({name}: {time.monotonic() - t0:.0f} s)", flush=True)
        if result.returncode:
            failed.append(name)
    if args.plot:
        from bench.plot import plot

        for picture in plot(args.plot):
            print(f"drew {picture}")
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
