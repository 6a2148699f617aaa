"""A short fuzz run as part of the tests (the long run is `python -m tests.campaigns.fuzz --long`)."""

from __future__ import annotations

from pathlib import Path

from tests.campaigns.fuzz import _fix_checksums, run_campaign


def test_short_fuzz_run_finds_no_bug(tmp_path: Path) -> None:
    stats = run_campaign(800, seed=20261128, folder=tmp_path)
    assert stats.execs == 800
    # the campaign reaches past the first gates: some mutants open, some are written
    assert stats.outcomes["read"] + stats.outcomes["written"] > 150
    assert not stats.bugs, "\n".join(f"{b.kind} on {b.seed}: {b.detail}" for b in stats.bugs[:3])


def test_mutants_cut_short_keep_the_harness_running() -> None:
    """A mutant cut below a footer's size that still starts with the cookie: the checksum fixer
    keeps its length and does not raise (a crash in the harness ends the whole campaign)."""
    for length in (8, 16, 23, 24, 511):
        data = bytearray(b"conectix" + bytes(length - 8))
        _fix_checksums(data)
        assert len(data) == length
