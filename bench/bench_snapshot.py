"""Benchmark: the freeze window of `vhdtool snapshot create` (first freeze to last thaw).

Simulated guests: 1, 8 and 512 guests of the `simulated` hypervisor whose agents take 50 ms to
freeze (and 50 ms to thaw), through the CLI as a user runs it; each size a few rounds, best and
median window printed with the whole command's wall time (which adds preparing the layers and
the watchdog). Target: < 1 s for 512 guests, since freezes run in parallel — the floor is one
freeze plus one thaw latency (100 ms) whatever the group size.

Real guest (``--real``): a TCG guest booted by `vhdtool run --agent` with qemu-ga inside (the
acceptance guest: Debian's cloud kernel, busybox, qemu-ga), snapshotted with
``--quiesce required`` a few times; its window is printed the same way.

Real hypervisors (``--libvirt``): the same guest as a libvirt TCG domain on a raw file disk
(libvirt's qcow2 overlay), as one on a VHD that `vhdtool serve` feeds (VHD layer switched by the
server), and under `vhdtool run`; the window of each alone, of mixed groups over the runner and
libvirt, and of one group over two libvirt connections. Starts libvirtd when none answers.

    .venv/bin/python bench/bench_snapshot.py [--rounds 3] [--sizes 1,8,512] [--real] [--libvirt]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchtools import VHDTOOL


def snapshot_window(args: list[str], env: dict[str, str]) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run([*VHDTOOL, "snapshot", "create", *args, "--json"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"snapshot failed: {done.stderr.strip()}")
    return json.loads(done.stdout)["freeze_window_ms"], wall


def simulated(sizes: list[int], rounds: int, env: dict[str, str]) -> None:
    print(f"{'guests':>7} {'best window':>12} {'median':>8} {'wall (best)':>12}")
    for n in sizes:
        args = ["--hypervisor", "simulated", "--all", "--quiesce", "required"]
        for option in (f"guests={n}", "freeze_ms=50", "thaw_ms=50"):
            args += ["--hypervisor-opt", option]
        results = [snapshot_window(args, env) for _ in range(rounds)]
        windows = [w for w, _ in results]
        verdict = ""
        if n >= 512:
            verdict = f"  (target < 1000 ms: {'met' if min(windows) < 1000 else 'MISSED'})"
        print(
            f"{n:>7} {min(windows):>9} ms {statistics.median(windows):>5.0f} ms "
            f"{min(w for _, w in results):>10.2f} s{verdict}"
        )


def real_guest(rounds: int, env: dict[str, str]) -> None:
    """Boot the acceptance guest under `vhdtool run --agent` and snapshot it ``rounds`` times."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.vss.guest import booted_guest

    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp, booted_guest(tmp, env) as guest:
        windows = [snapshot_window(["--guest", guest.name, "--quiesce", "required"], guest.env) for _ in range(rounds)]
        print(
            f"real TCG guest with qemu-ga: best window {min(w for w, _ in windows)} ms, "
            f"median {statistics.median(w for w, _ in windows):.0f} ms, wall {min(t for _, t in windows):.2f} s"
        )


def libvirt_groups(rounds: int, env: dict[str, str]) -> None:
    """Boot two libvirt domains and a runner guest; print the window of each kind of group."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from pathlib import Path

    from tests.vss.guest import booted_guest, build_image
    from tests.vss.libvirtd import booted, file_disk, nbd_disk, running_libvirtd, session_tag

    with tempfile.TemporaryDirectory(prefix="bench-libvirt-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        env = {**env, "VHDTOOL_STATE_DIR": str(folder / "state")}
        vhd, raw, sock = build_image(folder), folder / "g.raw", folder / "nbd.sock"
        subprocess.run([*VHDTOOL, "convert", "-O", "raw", vhd, raw], check=True, capture_output=True, env=env)
        server = subprocess.Popen([*VHDTOOL, "serve", vhd, "--socket", sock], stdout=subprocess.PIPE, env=env)
        tag = session_tag()
        try:
            assert server.stdout is not None and server.stdout.readline()  # its URI: listening and registered
            with (
                running_libvirtd(folder) as uri,
                booted(uri, f"{tag}-file", file_disk(raw), folder) as f,
                booted(uri, f"{tag}-nbd", nbd_disk(sock), folder) as n,
                booted_guest(folder / "run", env, name=f"{tag}-run") as r,
            ):
                if not (f.wait_ticks(3) and n.wait_ticks(3)):
                    sys.exit("libvirt guests did not boot")
                second = "qemu+unix:///system"
                lv = ["--hypervisor-opt", f"libvirt:uri={uri}"]
                run = ["--hypervisor-opt", f"runner:state={r.env['VHDTOOL_STATE_DIR']}"]
                kinds = {
                    "runner guest alone": ["--guest", f"runner:{r.name}", *run],
                    "libvirt, file disk (qcow2 overlay)": ["--guest", f"libvirt:{f.name}", *lv],
                    "libvirt, served VHD": ["--guest", f"libvirt:{n.name}", *lv],
                    "runner + libvirt served VHD": ["--guest", f"runner:{r.name}", "--guest", f"libvirt:{n.name}",
                                                    *run, *lv],
                    "runner + both libvirt guests": ["--guest", f"runner:{r.name}", "--guest", f"libvirt:{n.name}",
                                                     "--guest", f"libvirt:{f.name}", *run, *lv],
                    "two libvirt connections": ["--guest", f"libvirt:{f.name}@{uri}", "--guest",
                                                f"libvirt:{n.name}@{second}", *lv, "--hypervisor-opt",
                                                f"libvirt:uri={second}"],
                }  # fmt: skip
                windows: dict[str, list[int]] = {k: [] for k in kinds}
                for _ in range(rounds):  # kinds alternate within each round
                    for kind, args in kinds.items():
                        windows[kind].append(snapshot_window([*args, "--quiesce", "required"], env)[0])
                for kind, w in windows.items():
                    print(f"{kind:>36}: best {min(w)} ms, median {statistics.median(w):.0f} ms, worst {max(w)} ms")
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,8,512")
    parser.add_argument("--real", action="store_true", help="also snapshot a real TCG guest (boots one)")
    parser.add_argument("--libvirt", action="store_true", help="also groups of libvirt and runner guests (boots 3)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-records-") as records:
        env = {**os.environ, "VHDTOOL_SNAPSHOT_DIR": records}
        simulated([int(s) for s in opts.sizes.split(",")], opts.rounds, env)
        if opts.real:
            real_guest(opts.rounds, env)
        if opts.libvirt:
            libvirt_groups(opts.rounds, env)


if __name__ == "__main__":
    main()
