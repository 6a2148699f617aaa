"""Crash campaign: a writer doing random writes (with flushes) to dynamic and differencing images
is killed with SIGKILL at random moments; power cuts are simulated by also dropping the unsynced
tail of the file (truncating it to a random point after the last fsync vhdtool made).

After every kill: the image opens read-write without repair, `vhdtool check` reports no
corruption (leaks allowed), the last write a returned flush covered reads back (except where a
later write overwrote it), and parents are byte-identical.

    python -m tests.campaigns.crash               # 100 kill points
    python -m tests.campaigns.crash --long        # 1,000 kill points
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import vhdtool

SIZE = 1 << 30  # large against the writes, so that kills land while blocks are being allocated

# The writer reports each write before making it ("W off len value"), each flush that returned
# ("F"), and around every fsync/fdatasync vhdtool makes the file size before it ("P size") and
# its return ("S"). A P answered by an S made that size durable; a P without one may or may not
# have, but then nothing was written after it either (the S is the next thing the writer does).
WRITER = r"""
import os, random, sys
import vhdtool
import vhdtool.format.sparse
vhdtool.format.sparse.GROWTH_BYTES = 1  # every allocation grows the file: the hardest case
for name in ("fsync", "fdatasync"):
    real = getattr(os, name)
    def synced(fd, real=real):
        print("P", os.fstat(fd).st_size, flush=True)
        real(fd)
        print("S", flush=True)
    setattr(os, name, synced)
path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
with vhdtool.open(path, writable=True) as img:
    for r in range(10**6):
        off = rnd.randrange(0, size - 200000)
        n = rnd.randrange(1, 200000)
        value = r % 251 + 1
        print("W", off, n, value, flush=True)
        img.pwrite(off, bytes([value]) * n)
        if rnd.random() < 0.5:
            img.flush()
            print("F", flush=True)
"""


@dataclass
class Outcome:
    kills: int = 0
    failures: list[str] = field(default_factory=list)


def make_image(folder: Path, kind: str) -> tuple[Path, dict[Path, str]]:
    """A dynamic image, or a differencing child over a parent with data; returns parent hashes."""
    base = folder / "base.vhd"
    vhdtool.create(base, size=SIZE, block_size=512 * 1024)
    if kind == "dynamic":
        return base, {}
    with vhdtool.open(base, writable=True) as img:
        img.pwrite(0, os.urandom(3 << 20))
    child = folder / "child.vhd"
    vhdtool.create(child, parent=base)
    return child, {base: hashlib.sha256(base.read_bytes()).hexdigest()}


def kill_writer(path: Path, seed: int, max_delay: float = 0.6) -> list[list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seed), str(SIZE)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(random.Random(seed).uniform(0.05, max_delay))
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    fields = {"W": 4, "F": 1, "P": 2, "S": 1}  # the kill may cut the last line short: drop it then
    events = [line.split() for line in out.splitlines()]
    return [e for e in events if e and len(e) == fields.get(e[0])]


def power_cut(path: Path, events: list[list[str]], rnd: random.Random) -> None:
    synced = [int(e[1]) for e, after in itertools.pairwise(events) if e[0] == "P" and after[0] == "S"]
    current = path.stat().st_size
    if synced:
        os.truncate(path, rnd.randint(min(synced[-1], current), current))


def verify(path: Path, events: list[list[str]], parents: dict[Path, str]) -> str | None:
    """None when the image survived, else what went wrong."""
    check = subprocess.run([sys.executable, "-m", "vhdtool", "check", str(path)], capture_output=True, text=True)
    if check.returncode not in (0, 3) or "Traceback" in check.stderr:
        return f"check exit {check.returncode}: {check.stdout.strip()} {check.stderr.strip()}"
    try:
        vhdtool.open(path, writable=True).close_chain()
    except vhdtool.VhdError as e:
        return f"does not open read-write: {e}"
    for parent, digest in parents.items():
        if hashlib.sha256(parent.read_bytes()).hexdigest() != digest:
            return f"parent {parent.name} changed"
    last_flush = max((i for i, e in enumerate(events) if e[0] == "F"), default=None)
    if last_flush is None:
        return None
    writes = [tuple(map(int, e[1:])) for e in events if e[0] == "W"]
    flushed_count = sum(1 for e in events[:last_flush] if e[0] == "W")
    off, n, value = writes[flushed_count - 1]
    later = writes[flushed_count:]
    with vhdtool.open(path) as img:
        data = img.pread(off, n)
    for i in (i for i, b in enumerate(data) if b != value):
        pos = off + i
        if not any(o <= pos < o + m and data[i] == v for o, m, v in later):
            return f"flushed write at {off}+{n} lost at byte {pos}"
    return None


def run_campaign(kill_points: int, folder: Path, seed: int = 0, progress: bool = False) -> Outcome:
    """Half the kill points on a dynamic image, half on a differencing one; every other one also
    cuts the power."""
    outcome = Outcome()
    rnd = random.Random(seed)
    for kind in ("dynamic", "differencing"):
        work = folder / kind
        work.mkdir(parents=True, exist_ok=True)
        for k in range(kill_points // 2):
            if k % 4 == 0:  # a fresh image now and then, so that kills land while blocks are allocated
                for p in work.iterdir():
                    p.unlink()
                path, parents = make_image(work, kind)
            events = kill_writer(path, seed * 100000 + k + (50000 if kind == "differencing" else 0))
            if k % 2:
                power_cut(path, events, rnd)
            problem = verify(path, events, parents)
            outcome.kills += 1
            if problem:
                outcome.failures.append(f"{kind} kill {k}{' + power cut' if k % 2 else ''}: {problem}")
            if progress and outcome.kills % 50 == 0:
                print(f"{outcome.kills} kill points, {len(outcome.failures)} failures", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--long", action="store_true", help="1,000 kill points")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    kills = 1000 if args.long else args.kills
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vhdtool-crash-") as tmp:
        outcome = run_campaign(kills, Path(tmp), args.seed, progress=True)
    print(
        f"crash: {outcome.kills} kill points in {time.monotonic() - t0:.0f} s (seed {args.seed}), "
        f"{len(outcome.failures)} failures"
    )
    for failure in outcome.failures[:20]:
        print("  " + failure)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
