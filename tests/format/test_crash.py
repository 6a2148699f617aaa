"""Crash safety (see tests/campaigns/crash.py): every long command stopped just before a few of its
file mutations, and the in-place ones also losing power there (unsynced writes dropped, in-order
subsets kept); the long run covers every mutation."""

from __future__ import annotations

from pathlib import Path

from tests.campaigns.crash import CASES, run_campaign


def test_every_long_command_leaves_old_or_new(tmp_path: Path) -> None:
    outcome = run_campaign(tmp_path, sample=3, cuts=2, seed=3)
    assert set(outcome.per_case) == {case.name for case in CASES}
    assert all(points == min(3, mutations) for mutations, points, _ in outcome.per_case.values())
    assert outcome.cuts > 0
    assert not outcome.failures, "\n".join(outcome.failures)
