"""Crash campaign: every long command is stopped just before its k-th file mutation, for every k,
and in-place commands also lose power there.

How a run is stopped: the command runs in a child Python whose ``os`` mutations (pwrite, write,
ftruncate, truncate, fsync, fdatasync, rename, replace, unlink, copy_file_range, fallocate) go
through a shim that counts them; at mutation k the child SIGKILLs itself before making it. A first
run with no stop counts the mutations N, so k = 1..N covers every step exactly (the external
tools that build and cp run, mke2fs and debugfs, are not counted: they work on temporary files).

Power cuts: the shim also logs every write, truncation and fsync of the image the command
changes in place. A power cut at k keeps what the log says was written up to the last fsync
before k, plus a random in-order subset of the writes after it (the page cache may have written
any of them back, in any order; subsets in log order are the ones a journaling host filesystem
can leave). Each such state is judged like a kill.

The judgement, per command: the image opens read-write without repair, ``check`` finds no
corruption (leaks allowed), the disk reads what it read before the command or what the command
makes of it (by its size and a digest of every byte), and parents are byte-identical; for the
write loop of the API, every write a returned flush covered reads back; for cp, e2fsck finds the
filesystem clean and the copied file absent or whole; after a killed ``umount --commit``, running
the commit again gives the committed image.

    python -m tests.campaigns.crash                 # a sample of kill points per command
    python -m tests.campaigns.crash --long          # every kill point of every command
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import vhdtool
from tests.helpers import digest
from tests.helpers import vhdtool as run_vhdtool
from vhdtool.format.metadata import read_metadata
from vhdtool.ops.check import check_image

MiB = 1 << 20

# Runs before the command in the child. CRASH_AT=k stops before mutation k (0: never; the count
# is then printed as "MUTATIONS n" at exit); CRASH_LOG names a file to log the mutations of
# CRASH_TARGET (an image changed in place) into: records of kind, offset, length, then the data.
SHIM = r"""
import atexit, os, signal, struct, sys
_K = int(os.environ.get("CRASH_AT", "0"))
_target = os.environ.get("CRASH_TARGET")
_target = os.path.realpath(_target) if _target else None
_log = open(os.environ["CRASH_LOG"], "wb") if os.environ.get("CRASH_LOG") else None
_count = 0
_real = {}

def _step():
    global _count
    _count += 1
    if _count == _K:
        if _log is not None:
            _log.flush()
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def _ours(fd):
    try:
        return _target is not None and os.readlink(f"/proc/self/fd/{fd}") == _target
    except OSError:
        return False

def _record(kind, offset, data=b"", length=None):
    if _log is not None:
        n = len(data) if length is None else length
        _log.write(struct.pack("<cQQ", kind, offset, n) + bytes(data))

def _wrap(name, make):
    real = getattr(os, name, None)
    if real is not None:
        _real[name] = real
        setattr(os, name, make(real))

def _logged_write(where):
    # where(fd, rest) is the file offset the write lands at: pwrite's argument, write's position
    def wrap(real):
        def write(fd, data, *rest):
            _step()
            pos = where(fd, rest) if _ours(fd) else None
            n = real(fd, data, *rest)
            if pos is not None:
                _record(b"W", pos, memoryview(data)[:n])
            return n
        return write
    return wrap

def _ftruncate(real):
    def ftruncate(fd, size):
        _step()
        real(fd, size)
        if _ours(fd):
            _record(b"T", size)
    return ftruncate

def _sync(real):
    def sync(fd):
        _step()
        real(fd)
        if _ours(fd):
            _record(b"S", 0)
    return sync

def _plain(real):
    def plain(*args, **kw):
        _step()
        return real(*args, **kw)
    return plain

def _copy_range(real):
    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        _step()
        if _ours(dst):  # copied by hand, so that the log holds the data
            data = os.pread(src, count, offset_src)
            n = _real["pwrite"](dst, data, offset_dst)
            _record(b"W", offset_dst, data[:n])
            return n
        return real(src, dst, count, offset_src, offset_dst)
    return copy_file_range

_wrap("pwrite", _logged_write(lambda fd, rest: rest[0]))
_wrap("write", _logged_write(lambda fd, rest: os.lseek(fd, 0, os.SEEK_CUR)))
_wrap("ftruncate", _ftruncate)
_wrap("fsync", _sync)
_wrap("fdatasync", _sync)
_wrap("copy_file_range", _copy_range)
for _name in ("truncate", "rename", "replace", "unlink", "fallocate", "posix_fallocate"):
    _wrap(_name, _plain)

@atexit.register
def _report():
    if _log is not None:
        _log.close()
    if _K == 0:
        print("MUTATIONS", _count, flush=True)
"""

# The API's write loop: random writes, a flush now and then, the image closed at the end.
# "W off len value" is printed before each write, "F" after each flush that returned.
WRITER = r"""
import random, sys
import vhdtool, vhdtool.format.sparse
path, seed, growth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vhdtool.format.sparse.GROWTH_BYTES = growth
rnd = random.Random(seed)
with vhdtool.open(path, writable=True) as img:
    for r in range(24):
        off = rnd.randrange(0, img.size - 300000)
        n = rnd.randrange(1, 300000)
        value = r % 251 + 1
        print("W", off, n, value, flush=True)
        img.pwrite(off, bytes([value]) * n)
        if rnd.random() < 0.4:
            img.flush()
            print("F", flush=True)
"""

CLI = "import sys\nfrom vhdtool.cli import main\nsys.argv = ['vhdtool', *sys.argv[1:]]\nmain()\n"
COMMIT = "import sys\nfrom vhdtool.mount.undo import commit\ncommit(sys.argv[1], sys.argv[2])\n"


def disk_state(path: Path) -> tuple[int, str]:
    """(size, digest of every byte) as vhdtool reads the disk."""
    h = hashlib.sha256()
    with vhdtool.open(path) as img:
        for off in range(0, img.size, 4 * MiB):
            h.update(img.pread(off, min(4 * MiB, img.size - off)))
        return img.size, h.hexdigest()


@dataclass
class Case:
    """One command over the files ``setup`` makes in a folder."""

    name: str
    setup: Callable[[Path], None]
    code: str
    args: Callable[[Path], list[str]]
    target: str | None = None
    """The image changed in place (logged for power cuts), relative to the folder."""
    judge: Callable[[Path, Case, dict], str | None] | None = None
    parents: tuple[str, ...] = ()
    finish: Callable[[Path], None] | None = None
    """Run after a kill before judging (what a user does next: rerun the commit)."""


# -- the images the cases start from -------------------------------------------------------------


def _dynamic(path: Path, size: int = 24 * MiB, block: int = 512 * 1024, fill: tuple[int, ...] = (0, 3, 5, 9)) -> None:
    vhdtool.create(path, size=size, block_size=block)
    with vhdtool.open(path, writable=True) as img:
        for i in fill:
            img.pwrite(i * block + 4096, bytes([i + 1]) * 70000)


def _with_zero_blocks(folder: Path) -> None:
    _dynamic(folder / "d.vhd", fill=(0, 2, 4, 6, 8, 10, 12))
    with vhdtool.open(folder / "d.vhd", writable=True) as img:  # blocks 2 and 8 now read zeros
        for i in (2, 8):
            img.pwrite(i * 512 * 1024, bytes(512 * 1024))


def _written_child(parent: Path, child: Path, blocks: tuple[int, ...], at: int, length: int, value: int) -> None:
    """A child of ``parent`` that writes ``length`` bytes of ``value + i`` at ``at`` into each block i
    of ``blocks`` (512 KiB blocks, as _dynamic makes them)."""
    vhdtool.create(child, parent=parent)
    with vhdtool.open(child, writable=True) as img:
        for i in blocks:
            img.pwrite(i * 512 * 1024 + at, bytes([value + i]) * length)


def _chain(folder: Path) -> None:
    _dynamic(folder / "base.vhd")
    _written_child(folder / "base.vhd", folder / "child.vhd", (1, 3, 7), 100, 200000, 0x70)


def _rebase_setup(folder: Path) -> None:
    _chain(folder)
    vhdtool.create(folder / "other.vhd", size=24 * MiB, block_size=512 * 1024)


def _leaky(folder: Path) -> None:
    _dynamic(folder / "d.vhd")
    meta = read_metadata(folder / "d.vhd")
    assert meta.header is not None
    with open(folder / "d.vhd", "r+b") as f:  # block 9 forgotten by the BAT: a leak repair reclaims
        f.seek(int(meta.header.table_offset) + 4 * 9)
        f.write(b"\xff" * 4)


def _raw_source(folder: Path) -> None:
    data = bytearray(random.Random(5).randbytes(6 * MiB))
    data[2 * MiB : 3 * MiB] = bytes(MiB)
    (folder / "src.raw").write_bytes(bytes(data))


def _tree(folder: Path) -> None:
    (folder / "tree").mkdir()
    for i in range(5):
        (folder / "tree" / f"f{i}").write_bytes(random.Random(i).randbytes(100000))


def _fs_image(folder: Path) -> None:
    _tree(folder)
    vhdtool_cli(
        "build", folder / "fs.vhd", "--from-dir", folder / "tree", "--fs", "ext4", "--table", "none", "--size", "24M"
    )
    (folder / "new.bin").write_bytes(random.Random(9).randbytes(3 * MiB))


def _undo(folder: Path) -> None:
    _dynamic(folder / "img.vhd")
    _written_child(folder / "img.vhd", folder / "img.vhd.undo.vhd", (0, 4, 11), 7, 300000, 0x30)


def vhdtool_cli(*args: str | os.PathLike[str]) -> None:
    done = run_vhdtool(*args)
    assert done.returncode == 0, done.stderr


# -- judgements ------------------------------------------------------------------------------------


def _image_ok(path: Path) -> str | None:
    report = check_image(path)
    if report.exit_code not in (0, 3):
        return f"check exit {report.exit_code}: {[f.message for f in report.findings][:3]}"
    try:
        vhdtool.open(path, writable=True).close_chain()
    except vhdtool.VhdError as e:
        return f"does not open read-write: {e}"
    return None


def old_or_new(which: str) -> Callable[[Path, Case, dict], str | None]:
    """The image ``which`` reads as before the command or as after it."""

    def judge(folder: Path, case: Case, ctx: dict) -> str | None:
        path = folder / which
        problem = _image_ok(path)
        if problem:
            return problem
        state = disk_state(path)
        if state not in (ctx["before"][which], ctx["after"][which]):
            return f"{which} reads neither the old nor the new disk (size {state[0]})"
        return None

    return judge


def output_old_or_new(name: str) -> Callable[[Path, Case, dict], str | None]:
    """A file written beside and renamed into place: absent (or as before), or whole; no temporary left
    once the command runs again."""

    def judge(folder: Path, case: Case, ctx: dict) -> str | None:
        path = folder / name
        if path.exists():
            problem = _image_ok(path)
            if problem:
                return problem
            if disk_state(path) != ctx["after"][name]:
                return f"{name} is there but not the whole new disk"
        return None

    return judge


def cp_judge(folder: Path, case: Case, ctx: dict) -> str | None:
    path = folder / "fs.vhd"
    problem = _image_ok(path)
    if problem:
        return problem
    raw = folder / "check.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(raw)], check=True)
    try:
        fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        if fsck.returncode:
            return f"e2fsck: {fsck.stdout.strip().splitlines()[-1:]}"
        got = subprocess.run(["debugfs", "-R", "cat /new.bin", str(raw)], capture_output=True).stdout
    finally:
        raw.unlink()
    if got and got != (folder / "new.bin").read_bytes():
        return "/new.bin is torn"
    return None


def commit_finished(folder: Path) -> None:
    if (folder / "img.vhd.undo.vhd").exists():
        subprocess.run(
            [sys.executable, "-c", COMMIT, str(folder / "img.vhd.undo.vhd"), str(folder / "img.vhd")], check=True
        )


CASES = [
    Case("write", lambda f: _dynamic(f / "d.vhd", size=64 * MiB), WRITER, lambda f: [str(f / "d.vhd")], "d.vhd"),
    Case("write-child", _chain, WRITER, lambda f: [str(f / "child.vhd")], "child.vhd", parents=("base.vhd",)),
    Case(
        "resize-grow",
        lambda f: _dynamic(f / "d.vhd", size=20 * MiB + 300 * 1024),
        CLI,
        lambda f: ["resize", str(f / "d.vhd"), "600M"],
        "d.vhd",
        old_or_new("d.vhd"),
    ),
    Case(
        "resize-shrink",
        lambda f: _dynamic(f / "d.vhd"),
        CLI,
        lambda f: ["resize", "--force", str(f / "d.vhd"), str(4 * MiB + 700 * 1024)],
        "d.vhd",
        old_or_new("d.vhd"),
    ),
    Case("compact", _with_zero_blocks, CLI, lambda f: ["compact", str(f / "d.vhd")], "d.vhd", old_or_new("d.vhd")),
    Case("merge", _chain, CLI, lambda f: ["merge", str(f / "child.vhd")], "base.vhd", old_or_new("child.vhd")),
    Case(
        "rebase",
        _rebase_setup,
        CLI,
        lambda f: ["rebase", str(f / "child.vhd"), "--parent", str(f / "other.vhd")],
        "child.vhd",
        old_or_new("child.vhd"),
        parents=("base.vhd", "other.vhd"),
    ),
    Case("repair", _leaky, CLI, lambda f: ["repair", str(f / "d.vhd")], "d.vhd", old_or_new("d.vhd")),
    Case(
        "convert",
        _raw_source,
        CLI,
        lambda f: ["convert", str(f / "src.raw"), str(f / "out.vhd")],
        None,
        output_old_or_new("out.vhd"),
    ),
    Case(
        "build",
        _tree,
        CLI,
        lambda f: [
            "build",
            str(f / "out.vhd"),
            "--from-dir",
            str(f / "tree"),
            "--fs",
            "ext4",
            "--table",
            "gpt",
            "--reproducible",
        ],
        None,
        output_old_or_new("out.vhd"),
    ),
    Case("cp", _fs_image, CLI, lambda f: ["cp", str(f / "new.bin"), f"{f / 'fs.vhd'}:/new.bin"], None, cp_judge),
    Case(
        "umount-commit",
        _undo,
        COMMIT,
        lambda f: [str(f / "img.vhd.undo.vhd"), str(f / "img.vhd")],
        "img.vhd",
        old_or_new("img.vhd"),
        finish=commit_finished,
    ),
]


# -- running -----------------------------------------------------------------------------------------


def run_child(case: Case, folder: Path, at: int, log: Path | None, extra: list[str]) -> str:
    env = {**os.environ, "CRASH_AT": str(at)}
    if case.target and log is not None:
        env |= {"CRASH_TARGET": str(folder / case.target), "CRASH_LOG": str(log)}
    done = subprocess.run(
        [sys.executable, "-c", SHIM + case.code, *case.args(folder), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
    )
    if at == 0 and done.returncode != 0:
        raise AssertionError(f"{case.name}: the uninterrupted run failed: {done.stderr}")
    if at and done.returncode not in (-signal.SIGKILL, 0) and "Traceback" in done.stderr:
        raise AssertionError(f"{case.name} stopped at {at}: a traceback: {done.stderr}")
    return done.stdout


def read_log(log: Path) -> list[tuple[bytes, int, bytes]]:
    data = log.read_bytes()
    out, pos = [], 0
    head = struct.calcsize("<cQQ")
    while pos + head <= len(data):
        kind, offset, n = struct.unpack_from("<cQQ", data, pos)
        pos += head
        payload = data[pos : pos + n] if kind == b"W" else b""
        pos += len(payload)
        out.append((kind, offset, payload if kind == b"W" else n.to_bytes(8, "little")))
    return out


def power_cut_states(start: Path, events: list, rnd: random.Random, count: int) -> list[list]:
    """Event lists a power cut can leave: all up to the last fsync, then in-order subsets of the rest."""
    last = max((i for i, e in enumerate(events) if e[0] == b"S"), default=-1)
    durable, pending = events[: last + 1], [e for e in events[last + 1 :] if e[0] != b"S"]
    states = [durable]
    for _ in range(count - 1):
        if not pending:
            break
        states.append(durable + [e for e in pending if rnd.random() < 0.5])
    return states


def apply_events(start: Path, target: Path, events: list) -> None:
    shutil.copyfile(start, target)
    with open(target, "r+b") as f:
        for kind, offset, payload in events:
            if kind == b"W":
                f.seek(offset)
                f.write(payload)
            elif kind == b"T":
                f.truncate(offset)


def writer_judge(folder: Path, case: Case, out: str) -> str | None:
    path = folder / case.args(folder)[0]
    problem = _image_ok(path)
    if problem:
        return problem
    events = [line.split() for line in out.splitlines() if line and line[0] in "WF"]
    writes = [tuple(map(int, e[1:])) for e in events if e[0] == "W" and len(e) == 4]
    flushed = sum(
        1 for e in events[: max((i for i, e in enumerate(events) if e[0] == "F"), default=-1) + 1] if e[0] == "W"
    )
    with vhdtool.open(path) as img:
        for i in range(flushed):  # every flushed write reads back, unless a later write covers it
            off, n, value = writes[i]
            data = img.pread(off, n)
            if data == bytes([value]) * n:
                continue
            for j, b in enumerate(data):
                if b == value:
                    continue
                pos = off + j
                later = [v for o, m, v in writes[i + 1 :] if o <= pos < o + m]
                if b not in later:
                    return f"flushed write {i} at {off}+{n} lost at byte {pos}"
    return None


def parents_same(folder: Path, case: Case, ctx: dict) -> str | None:
    for name in case.parents:
        if digest(folder / name) != ctx["parents"][name]:
            return f"parent {name} changed"
    return None


@dataclass
class Outcome:
    points: int = 0
    cuts: int = 0
    failures: list[str] = field(default_factory=list)
    per_case: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """case -> (mutations, kill points run, power-cut states judged)."""


def run_case(case: Case, work: Path, outcome: Outcome, sample: int | None, cuts: int, seed: int) -> None:
    rnd = random.Random(f"{seed}-{case.name}")
    pristine = work / f"{case.name}-pristine"
    pristine.mkdir(parents=True)
    case.setup(pristine)
    growth = [str(rnd.choice([1, 512 * 1024, 32 * MiB]))] if case.code is WRITER else []
    if case.code is WRITER:
        growth = [str(seed), *growth]
    names = [p.name for p in pristine.iterdir()]
    ctx: dict = {"before": {}, "after": {}, "parents": {n: digest(pristine / n) for n in case.parents}}
    for n in names:
        if n.endswith(".vhd"):
            ctx["before"][n] = disk_state(pristine / n)
    full = work / f"{case.name}-full"
    shutil.copytree(pristine, full)
    out = run_child(case, full, 0, None, growth)
    mutations = int(out.rsplit("MUTATIONS", 1)[1].split()[0])
    for p in full.iterdir():
        if p.suffix == ".vhd" and not p.name.startswith("."):
            ctx["after"][p.name] = disk_state(p)
    points = list(range(1, mutations + 1))
    if sample is not None and len(points) > sample:
        points = sorted(rnd.sample(points, sample))
    run_points = judged = 0
    for k in points:
        trial = work / f"{case.name}-{k}"
        shutil.copytree(pristine, trial)
        log = work / f"{case.name}-{k}.log"
        out = run_child(case, trial, k, log if cuts else None, growth)
        states: list[tuple[str, Path]] = [("kill", trial)]
        if cuts and case.target and log.exists():
            events = read_log(log)
            for i, evs in enumerate(power_cut_states(pristine / case.target, events, rnd, cuts)):
                cut = work / f"{case.name}-{k}-cut{i}"
                shutil.copytree(trial, cut)
                apply_events(pristine / case.target, cut / case.target, evs)
                states.append((f"power cut {i}", cut))
        for label, folder in states:
            if case.finish is not None:
                case.finish(folder)
            try:
                problem = case.judge(folder, case, ctx) if case.judge is not None else writer_judge(folder, case, out)
                problem = problem or parents_same(folder, case, ctx)
            except Exception as e:  # a reader blowing up on the state is a failure too
                problem = f"{type(e).__name__}: {e}"
            if problem:
                outcome.failures.append(f"{case.name} stopped before mutation {k}/{mutations} ({label}): {problem}")
            judged += label != "kill"
            if folder != trial:
                shutil.rmtree(folder)
        shutil.rmtree(trial)
        if log.exists():
            log.unlink()
        run_points += 1
    outcome.points += run_points
    outcome.cuts += judged
    outcome.per_case[case.name] = (mutations, run_points, judged)
    shutil.rmtree(pristine)
    shutil.rmtree(full)


def run_campaign(
    folder: Path,
    sample: int | None = 6,
    cuts: int = 3,
    seed: int = 0,
    only: list[str] | None = None,
    progress: bool = False,
) -> Outcome:
    outcome = Outcome()
    for case in CASES:
        if only and case.name not in only:
            continue
        run_case(case, folder, outcome, sample, cuts, seed)
        if progress:
            m, p, c = outcome.per_case[case.name]
            print(
                f"{case.name}: {m} mutations, {p} kill points, {c} power-cut states; "
                f"{len(outcome.failures)} failures so far",
                flush=True,
            )
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=6, help="kill points per command (default 6)")
    ap.add_argument("--long", action="store_true", help="every kill point of every command")
    ap.add_argument("--cuts", type=int, default=3, help="power-cut states per kill point of an in-place command")
    ap.add_argument("--only", nargs="*", help="these commands only")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vhdtool-crash-") as tmp:
        outcome = run_campaign(Path(tmp), None if args.long else args.sample, args.cuts, args.seed, args.only, True)
    print(
        f"crash: {outcome.points} kill points and {outcome.cuts} power-cut states in "
        f"{time.monotonic() - t0:.0f} s (seed {args.seed}), {len(outcome.failures)} failures"
    )
    for failure in outcome.failures[:30]:
        print("  " + failure)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
