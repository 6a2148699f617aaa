"""Crash safety: a writer killed with SIGKILL at random moments, and power cuts simulated by
dropping the unsynced tail of the file. After each: the image opens read-write without repair,
`check` finds no corruption (leaks allowed), the last flushed write reads back, parents are
unchanged."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import vhdtool as cli
from vhdtool.format.rules import MiB

SIZE = 48 * MiB

# The writer reports each flush it completed ("F off len value") and the file size after every
# fsync/fdatasync vhdtool makes ("S size"): a power cut can only lose what lies past that size.
WRITER = r"""
import os, random, sys
import vhdtool
size_of = lambda fd: os.fstat(fd).st_size
for name in ("fsync", "fdatasync"):
    real = getattr(os, name)
    def synced(fd, real=real):
        real(fd)
        print("S", size_of(fd), flush=True)
    setattr(os, name, synced)
path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
with vhdtool.open(path, writable=True) as img:
    for r in range(10**6):
        off = rnd.randrange(0, size - 600000)
        n = rnd.randrange(1, 600000)
        value = r % 251 + 1
        print("W", off, n, value, flush=True)
        img.pwrite(off, bytes([value]) * n)
        if rnd.random() < 0.5:
            img.flush()
            print("F", flush=True)
"""


def _run_and_kill(path: Path, seed: int) -> list[list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seed), str(SIZE)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(random.Random(seed).uniform(0.1, 0.6))
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    return [line.split() for line in out.splitlines() if line.strip()]


def _verify(path: Path, events: list[list[str]]) -> None:
    rc = cli("check", path).returncode
    assert rc in (0, 3), f"check exit {rc} after a crash"
    vhdtool.open(path, writable=True).close_chain()  # opens read-write without repair
    # the last write a returned flush covered must read back, except where a later write (which
    # may or may not have reached the file) overwrote it
    last_flush = max((i for i, e in enumerate(events) if e[0] == "F"), default=None)
    if last_flush is None:
        return
    writes = [tuple(map(int, e[1:])) for e in events if e[0] == "W"]
    flushed_count = sum(1 for e in events[:last_flush] if e[0] == "W")
    off, n, value = writes[flushed_count - 1]
    later = writes[flushed_count:]
    with vhdtool.open(path) as img:
        data = img.pread(off, n)
    for i in (i for i, b in enumerate(data) if b != value):
        pos = off + i
        assert any(o <= pos < o + m and data[i] == v for o, m, v in later), f"flushed write lost at {pos}"


def _make(tmp_path: Path, kind: str) -> tuple[Path, dict[Path, str]]:
    base = tmp_path / "base.vhd"
    vhdtool.create(base, size=SIZE, block_size=512 * 1024)
    if kind == "dynamic":
        return base, {}
    with vhdtool.open(base, writable=True) as img:
        img.pwrite(0, os.urandom(3 * MiB))
    child = tmp_path / "child.vhd"
    vhdtool.create(child, parent=base)
    return child, {base: hashlib.sha256(base.read_bytes()).hexdigest()}


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_kill_9_at_random_moments(tmp_path: Path, kind: str) -> None:
    path, parents = _make(tmp_path, kind)
    for seed in range(6):
        events = _run_and_kill(path, seed)
        _verify(path, events)
    for parent, digest in parents.items():
        assert hashlib.sha256(parent.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_power_cut_drops_unsynced_tail(tmp_path: Path, kind: str) -> None:
    path, parents = _make(tmp_path, kind)
    rnd = random.Random(42)
    for seed in range(6):
        events = _run_and_kill(path, seed + 100)
        synced = [int(e[1]) for e in events if e[0] == "S"]
        current = path.stat().st_size
        if synced:
            keep = rnd.randint(min(synced[-1], current), current)
            os.truncate(path, keep)
        _verify(path, events)
    for parent, digest in parents.items():
        assert hashlib.sha256(parent.read_bytes()).hexdigest() == digest
