"""Fuzz campaign: mutate real images and open, read, check and write them.

Anything but vhdtool's own VhdError is a bug: another exception escaping, a hang (each execution
runs under a deadline), a read returning the wrong length, a write that does not read back, a
parent file touched, memory growing without bound (the process runs under an address-space limit).

    python -m tests.campaigns.fuzz                 # 20,000 executions
    python -m tests.campaigns.fuzz --long          # 1,000,000 executions
    python -m tests.campaigns.fuzz --execs N --seed S
"""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import vhdtool
from tests.campaigns.corpus import Seed, build_corpus
from tests.campaigns.runner import campaign_parser, run_and_report
from vhdtool.errors import VhdError
from vhdtool.format.structs import FOOTER_CHECKSUM_AT, HEADER_CHECKSUM_AT, vhd_checksum
from vhdtool.ops.check import check_image

DEADLINE_S = 10
INTERESTING_32 = [0, 1, 2, 511, 512, 513, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x200000, 0x1000, 3]
INTERESTING_64 = [0, 1, 512, 1536, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 40, 2040 << 30, 127 << 30]


class Hang(Exception):
    pass


@dataclass
class Bug:
    seed: str
    kind: str
    detail: str
    image: bytes


@dataclass
class Stats:
    execs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    bugs: list[Bug] = field(default_factory=list)


def _fix_checksums(data: bytearray) -> None:
    """Recompute the footer and header checksums so mutations get past the first gate."""
    if len(data) >= 512 and data[-512:-504] == b"conectix":
        tail = data[-512:]
        data[-512 + FOOTER_CHECKSUM_AT : -512 + FOOTER_CHECKSUM_AT + 4] = vhd_checksum(
            tail, FOOTER_CHECKSUM_AT
        ).to_bytes(4, "big")
    if len(data) >= 512 and data[:8] == b"conectix":
        data[FOOTER_CHECKSUM_AT : FOOTER_CHECKSUM_AT + 4] = vhd_checksum(data[:512], FOOTER_CHECKSUM_AT).to_bytes(
            4, "big"
        )
        hdr = struct.unpack(">Q", data[16:24])[0]
        if hdr + 1024 <= len(data) and data[hdr : hdr + 8] == b"cxsparse":
            raw = data[hdr : hdr + 1024]
            data[hdr + HEADER_CHECKSUM_AT : hdr + HEADER_CHECKSUM_AT + 4] = vhd_checksum(
                raw, HEADER_CHECKSUM_AT
            ).to_bytes(4, "big")


def mutate(original: bytes, rnd: random.Random) -> bytes:
    data = bytearray(original)
    for _ in range(rnd.choice([1, 1, 2, 3, 5])):
        kind = rnd.random()
        hot = [(0, min(len(data), 0x3000)), (max(0, len(data) - 512), len(data))]  # footers, header, BAT, locators
        lo, hi = rnd.choice(hot) if rnd.random() < 0.9 else (0, len(data))
        if hi - lo < 8:
            continue
        at = rnd.randrange(lo, hi - 8)
        if kind < 0.35:
            data[at] ^= 1 << rnd.randrange(8)
        elif kind < 0.6:
            data[at : at + 4] = struct.pack(">I", rnd.choice(INTERESTING_32))
        elif kind < 0.75:
            data[at : at + 8] = struct.pack(">Q", rnd.choice(INTERESTING_64))
        elif kind < 0.85:
            data[at : at + 4] = rnd.randbytes(4)
        elif kind < 0.92:
            del data[rnd.randrange(len(data)) :]
            if not data:
                break
        else:
            data += rnd.randbytes(rnd.choice([1, 511, 512, 4096]))
    if rnd.random() < 0.75:
        _fix_checksums(data)
    return bytes(data)


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def _exercise(path: Path, rnd: random.Random) -> str:
    """Open, read, extents, check, write, re-read. Returns how far it got."""
    outcome = "refused"
    try:
        with vhdtool.open(path) as img:
            size = img.size
            for _ in range(4):
                off = rnd.randrange(0, size + 10) if size else 0
                n = rnd.choice([1, 512, 4097, 1 << 20])
                got = img.pread(off, n)
                if len(got) != max(0, min(n, size - off)):
                    raise AssertionError(f"pread({off}, {n}) on a disk of {size} returned {len(got)} bytes")
            for e in islice(img.extents(), 2000):
                if e.length <= 0 or e.offset < 0:
                    raise AssertionError(f"bad extent {e}")
            outcome = "read"
    except VhdError:
        pass
    with contextlib.suppress(VhdError):
        check_image(path)
    try:
        with vhdtool.open(path, writable=True) as img:
            if img.size:
                off = rnd.randrange(0, img.size)
                payload = rnd.randbytes(min(rnd.choice([1, 600, 70000]), img.size - off))
                img.pwrite(off, payload)
                img.flush()
                if img.pread(off, len(payload)) != payload:
                    raise AssertionError("a write did not read back before close")
        if img.size:
            with vhdtool.open(path) as again:
                if again.pread(off, len(payload)) != payload:
                    raise AssertionError("a write did not read back after reopening")
        outcome = "written"
    except VhdError:
        pass
    return outcome


def _found(stats: Stats, bug: Bug, execution: int, progress: bool, keep: Path | None) -> None:
    """Record a bug, and in a long run say so and keep its image at once: a campaign stopped later
    (a kill, a crash of the harness) must not lose what it found."""
    stats.bugs.append(bug)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"bug-{execution}-{bug.seed}-{bug.kind}.vhd").write_bytes(bug.image)
    if progress:
        print(f"bug at execution {execution}: {bug.kind} on {bug.seed}\n{bug.detail}", flush=True)


def run_campaign(execs: int, seed: int, folder: Path, progress: bool = False, keep: Path | None = None) -> Stats:
    seeds = build_corpus(folder / "corpus")
    originals = {s.name: s.path.read_bytes() for s in seeds}
    watched = {p: p.stat().st_mtime_ns for p in (folder / "corpus").iterdir()}
    rnd = random.Random(seed)
    stats = Stats()
    old = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    try:
        for i in range(execs):
            s: Seed = rnd.choice(seeds)
            target = s.path.with_name("fuzz-" + s.path.name)  # beside the seed: parents resolve
            image = mutate(originals[s.name], rnd)
            target.write_bytes(image)
            signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
            try:
                stats.outcomes[_exercise(target, rnd)] += 1
            except Hang:
                _found(stats, Bug(s.name, "hang", f"no answer within {DEADLINE_S} s", image), i, progress, keep)
            except Exception as e:  # anything but VhdError is a bug
                bug = Bug(s.name, type(e).__name__, traceback.format_exc(limit=6), image)
                _found(stats, bug, i, progress, keep)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            stats.execs += 1
            if progress and i and i % 10000 == 0:
                rate = i / (time.monotonic() - started)
                print(f"{i} executions, {rate:.0f}/s, {len(stats.bugs)} bugs, {dict(stats.outcomes)}", flush=True)
        stats.bugs += changed_files(watched, "parent-changed")
    finally:
        signal.signal(signal.SIGALRM, old)
    return stats


def changed_files(watched: dict[Path, int], kind: str) -> list[Bug]:
    """A bug for each file (a parent, the corpus) whose modification time the campaign changed."""
    return [
        Bug(p.name, kind, f"{p} was modified by the campaign", b"")
        for p, t in watched.items()
        if p.stat().st_mtime_ns != t
    ]


def main(argv: list[str] | None = None) -> int:
    ap = campaign_parser(__doc__, 20000, "folder to save images that found bugs")
    ap.add_argument("--long", action="store_true", help="1,000,000 executions")
    args = ap.parse_args(argv)
    execs = 1_000_000 if args.long else args.execs
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # unbounded memory shows up as MemoryError
    return run_and_report(
        "fuzz", args.seed, lambda tmp: run_campaign(execs, args.seed, tmp, progress=True, keep=args.keep)
    )


if __name__ == "__main__":
    sys.exit(main())
