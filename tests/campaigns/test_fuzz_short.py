"""A short fuzz run as part of the tests (the long run is `python -m tests.campaigns.fuzz --long`)."""

from __future__ import annotations

from pathlib import Path

from tests.campaigns.fuzz import run_campaign


def test_short_fuzz_run_finds_no_bug(tmp_path: Path) -> None:
    stats = run_campaign(800, seed=20261128, folder=tmp_path)
    assert stats.execs == 800
    # the campaign reaches past the first gates: some mutants open, some are written
    assert stats.outcomes["read"] + stats.outcomes["written"] > 150
    assert not stats.bugs, "\n".join(f"{b.kind} on {b.seed}: {b.detail}" for b in stats.bugs[:3])
