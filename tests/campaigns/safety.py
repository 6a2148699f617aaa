"""Differential safety campaign: does a command that promises to keep a disk's content keep it?

The fuzz campaign counts tracebacks; this one counts lost data. Each execution mutates a seed
image as the fuzz campaign does, copies it (with the parents it needs) into a fresh folder, and
runs one command that claims to keep content: compact, repair, relink, reset-id, resize (grow),
merge, rebase (safe mode), convert. A peer reads the disk before and after: qemu-img for
standalone images, vhdtool's own reader for chains (qemu's vpc driver ignores parents), run on
the untouched files before the command. A bug is

- a byte that reads differently afterwards, outside the ranges the command says it changed
  (repair lists the ranges it clears; a grow adds zeros past the old end);
- a disk readable before and unreadable after a command that exited 0;
- a refused command (vhdtool's own error) that changed any file;
- a file outside the execution's folder (the corpus) changed;
- any other exception, or no answer within the deadline.

    python -m tests.campaigns.safety                  # 2,000 executions
    python -m tests.campaigns.safety --execs N --seed S [--keep DIR]
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import vhdtool
from tests.campaigns.corpus import Seed, build_corpus
from tests.campaigns.fuzz import Bug, Hang, Stats, _alarm, _found, changed_files, mutate
from tests.campaigns.runner import campaign_parser, run_and_report
from vhdtool.errors import VhdError
from vhdtool.format.chain import find_parent
from vhdtool.format.metadata import read_metadata
from vhdtool.format.rules import qemu72_virtual_size
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING
from vhdtool.ops.compact import compact
from vhdtool.ops.convert import convert
from vhdtool.ops.merge import merge
from vhdtool.ops.rebase import rebase
from vhdtool.ops.relink import relink
from vhdtool.ops.repair import repair
from vhdtool.ops.reset_id import reset_id
from vhdtool.ops.resize import resize

DEADLINE_S = 30
MAX_DISK = 64 << 20
"""Mutants whose size fields claim more are skipped: both readers would read every byte."""
COMMANDS = ("compact", "repair", "relink", "reset-id", "resize-grow", "merge", "rebase", "convert")
_LISTED = re.compile(r"disk bytes (\d+)-(\d+) (?:now )?read")


@dataclass
class Outcome:
    """What the command did: refused (vhdtool's error), or ran, and where the disk now is."""

    refused: bool
    result_path: Path | None = None
    changed_ranges: list[tuple[int, int]] = field(default_factory=list)
    """Disk byte ranges [first, end) the command said it changed."""
    grown_from: int | None = None
    resized: bool = False
    """The command said the disk's size changed: only what both sizes hold is compared."""
    keeps_larger_parent: bool = False
    """A merge into a larger parent: the result may be longer than what the child read."""


def _ancestors(path: Path) -> list[Path]:
    """The parent files a seed needs beside it (found through its untouched metadata)."""
    out: list[Path] = []
    meta = read_metadata(path)
    while meta.disk_type == DISK_TYPE_DIFFERENCING:
        parent = Path(find_parent(meta))
        out.append(parent)
        meta = read_metadata(parent)
    return out


def _qemu_read(path: Path, scratch: Path) -> bytes | None:
    out = scratch / "peer.raw"
    try:
        done = subprocess.run(
            ["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(out)], capture_output=True, timeout=60
        )
        return out.read_bytes() if done.returncode == 0 else None
    finally:
        out.unlink(missing_ok=True)


def _vhdtool_read(path: Path) -> bytes | None:
    try:
        with vhdtool.open(path) as img:
            return img.pread(0, img.size)
    except VhdError:
        return None


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(command: str, target: Path, work: Path, rnd: random.Random) -> Outcome:
    try:
        if command == "compact":
            compact(target)
        elif command == "repair":
            done = repair(target)
            ranges = [(int(a), int(b) + 1) for line in done.actions for a, b in _LISTED.findall(line)]
            # a footer restored from its copy (or moved) says the disk has the size that one records
            footer = any(a.startswith(("restored the footer", "moved the footer")) for a in done.actions)
            return Outcome(False, target, ranges, resized=footer)
        elif command == "relink":
            relink(target)
        elif command == "reset-id":
            reset_id(target, children=[str(work)])
        elif command == "resize-grow":
            old = read_metadata(target).virtual_size
            resize(target, f"+{rnd.choice([512, 64 << 10, 1 << 20, 3 << 20])}")
            return Outcome(False, target, grown_from=old)
        elif command == "merge":
            into = merge(target).into
            # a parent larger than the child keeps its size (as qemu-img commit does): what the
            # child read is the parent's first bytes, the rest stays the parent's own
            return Outcome(False, Path(into), keeps_larger_parent=True)
        elif command == "rebase":
            rebase(target, work / "other.vhd")
        elif command == "convert":
            out = work / "converted.vhd"
            done = convert(target, out, disk_type=rnd.choice(["dynamic", "fixed"]))
            # a VHD holds whole sectors: an odd-sized source is rounded up, zeros after (reported)
            return Outcome(False, out, grown_from=done.size)
    except VhdError:
        return Outcome(True)
    return Outcome(False, target)


def _commands_for(meta_type: int) -> tuple[str, ...]:
    if meta_type == DISK_TYPE_DIFFERENCING:
        return COMMANDS
    return tuple(c for c in COMMANDS if c not in ("relink", "merge", "rebase"))


def _too_large(path: Path) -> bool:
    """A mutant whose disk is larger than the campaign reads whole (a mutated size field)."""
    try:
        meta = read_metadata(path)
    except VhdError:
        return False
    qemu = qemu72_virtual_size(bytes(meta.footer.creator_application), meta.geometry, meta.virtual_size)
    return max(meta.virtual_size, qemu) > MAX_DISK


def execute(seed: Seed, mutant: bytes, rnd: random.Random, work: Path) -> tuple[str, str, str | None]:
    """One execution: (command, outcome, what went wrong or None)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for parent in _ancestors(seed.path):
        shutil.copy(parent, work / parent.name)
    target = work / seed.path.name
    target.write_bytes(mutant)
    chain = read_metadata(seed.path).disk_type == DISK_TYPE_DIFFERENCING
    command = rnd.choice(_commands_for(read_metadata(seed.path).disk_type))
    if _too_large(target):
        return command, "skipped-large", None
    if command == "rebase":  # the new parent: an empty disk of the size the seed had
        vhdtool.create(work / "other.vhd", size=read_metadata(seed.path).virtual_size)
    scratch = work.parent
    before_files = _snapshot(work)
    # the peer reads the untouched files first (a merge changes the parent the chain reads through)
    before = _vhdtool_read(target) if chain else None
    own = None
    try:
        outcome = _run(command, target, work, rnd)
    except Hang:
        raise
    except Exception:  # anything but VhdError is a bug
        return command, "crashed", traceback.format_exc(limit=8)
    after_files = _snapshot(work)
    if outcome.refused:
        changed = [n for n in before_files if after_files.get(n) != before_files[n]]
        extra = [n for n in after_files if n not in before_files and not n.endswith(".repair-backup")]
        if changed or extra:
            return command, "refused", f"refused, yet changed {changed + extra}"
        return command, "refused", None
    if not chain:
        if {n: b for n, b in after_files.items() if n in before_files} == before_files and command != "convert":
            return command, "unchanged", None  # not a byte changed: the peer would read the same
        pristine = scratch / "pristine"
        shutil.rmtree(pristine, ignore_errors=True)
        pristine.mkdir()
        (pristine / target.name).write_bytes(before_files[target.name])
        before = _qemu_read(pristine / target.name, scratch)
        own = _vhdtool_read(pristine / target.name)
    if before is None:
        return command, "unreadable-before", None  # nothing readable to lose
    assert outcome.result_path is not None
    result_chain = read_metadata(outcome.result_path).disk_type == DISK_TYPE_DIFFERENCING
    after = _vhdtool_read(outcome.result_path) if result_chain or chain else _qemu_read(outcome.result_path, scratch)
    if after is None:
        return command, "ran", f"readable before, unreadable after {command} exited 0"
    problem = _compare(before, after, outcome)
    if problem is not None and not chain and own is not None and own != before:
        # the readers disagree on the mutant (a partly set bitmap; a CHS size past Current Size,
        # where qemu reads the footer itself as disk data): vhdtool's reading is the reference
        after_own = _vhdtool_read(outcome.result_path)
        if after_own is None:
            return command, "peers-disagree", f"readable before, unreadable after {command} exited 0"
        return command, "peers-disagree", _compare(own, after_own, outcome)
    return command, "ran", problem


def _compare(before: bytes, after: bytes, outcome: Outcome) -> str | None:
    expected = bytearray(before)
    if outcome.grown_from is not None and len(after) > len(before):
        expected += bytes(len(after) - len(before))
    for first, end in outcome.changed_ranges:
        if first < len(expected):  # cleared: reads zeros on a dynamic disk, the parent on a child
            expected[first:end] = after[first:end]
    if outcome.keeps_larger_parent and len(after) > len(expected):
        after = after[: len(expected)]
    if outcome.resized:
        common = min(len(after), len(expected))
        after, expected = after[:common], expected[:common]
    if len(after) != len(expected):
        return f"size {len(before)} before, {len(after)} after"
    if after != expected:
        at = next(i for i in range(len(after)) if after[i] != expected[i])
        return f"content differs from offset {at} (of {len(after)} bytes), outside what the command listed"
    return None


def run_campaign(
    execs: int,
    seed: int,
    folder: Path,
    progress: bool = False,
    keep: Path | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Stats:
    """``stop_requested`` ends the run early, after the execution in progress (SIGTERM in main)."""
    seeds = build_corpus(folder / "corpus")
    originals = {s.name: s.path.read_bytes() for s in seeds}
    watched = {p: p.stat().st_mtime_ns for p in (folder / "corpus").iterdir()}
    corpus_files = {p: p.read_bytes() for p in watched}
    rnd = random.Random(seed)
    stats = Stats()
    work = folder / "work" / "x"
    work.parent.mkdir(parents=True, exist_ok=True)
    old = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    try:
        for i in range(execs):
            s = rnd.choice(seeds)
            signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
            command = "?"
            mutant = mutate(originals[s.name], rnd) if rnd.random() < 0.85 else originals[s.name]
            try:
                command, outcome, problem = execute(s, mutant, rnd, work)
                stats.outcomes[f"{command}:{outcome}"] += 1
            except Hang:
                problem = f"no answer within {DEADLINE_S} s"
            except Exception:  # anything but VhdError is a bug
                problem = traceback.format_exc(limit=6)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if problem is not None:
                _found(stats, Bug(s.name, command, problem, mutant), i, progress, keep)
            for bug in changed_files(watched, f"{command} changed the corpus"):
                _found(stats, Bug(s.name, bug.kind, bug.detail, mutant), i, progress, keep)
                # put the file back, so that one write outside the folder is counted once
                changed = folder / "corpus" / bug.seed
                changed.write_bytes(corpus_files[changed])
                watched[changed] = changed.stat().st_mtime_ns
            stats.execs += 1
            if progress and i and i % 1000 == 0:
                rate = i / (time.monotonic() - started)
                print(f"{i} executions, {rate:.1f}/s, {len(stats.bugs)} bugs, {dict(stats.outcomes)}", flush=True)
            if stop_requested():
                break
    finally:
        signal.signal(signal.SIGALRM, old)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = campaign_parser(__doc__, 2000, "folder to save the mutants that found bugs")
    args = ap.parse_args(argv)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))  # a timeout still reports
    return run_and_report(
        "safety",
        args.seed,
        lambda tmp: run_campaign(args.execs, args.seed, tmp, True, args.keep, lambda: bool(stopping)),
        lambda: " (stopped by SIGTERM)" if stopping else "",
    )


if __name__ == "__main__":
    sys.exit(main())
