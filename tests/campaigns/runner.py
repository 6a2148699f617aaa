"""What the mutation campaigns' command lines share: the common options, a scratch folder in
memory, and the report of a run (one summary line, then one example of each kind of bug)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fuzz imports this module for its own main
    from tests.campaigns.fuzz import Stats


def campaign_parser(doc: str, execs: int, keep_help: str) -> argparse.ArgumentParser:
    """The options every campaign takes: how many executions, the random seed, where to keep bugs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--execs", type=int, default=execs)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--keep", type=Path, help=keep_help)
    return ap


def run_and_report(
    name: str, seed: int, campaign: Callable[[Path], Stats], note: Callable[[], str] = lambda: ""
) -> int:
    """Run ``campaign`` in a scratch folder (in /dev/shm where there is one: mutants are many and
    small), print what it found, and return the exit status: 1 if it found a bug."""
    with tempfile.TemporaryDirectory(
        prefix=f"vhdtool-{name}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as tmp:
        t0 = time.monotonic()
        stats = campaign(Path(tmp))
        elapsed = time.monotonic() - t0
    print(
        f"{name}: {stats.execs} executions{note()} in {elapsed:.0f} s (seed {seed}), "
        f"outcomes {dict(sorted(stats.outcomes.items()))}, {len(stats.bugs)} bugs"
    )
    kinds: Counter[tuple[str, str]] = Counter((b.seed, b.kind) for b in stats.bugs)
    for (seed_name, kind), n in kinds.most_common():
        example = next(b for b in stats.bugs if (b.seed, b.kind) == (seed_name, kind))
        print(f"  {n}x {kind} on {seed_name}:\n{example.detail}")
    return 1 if stats.bugs else 0
