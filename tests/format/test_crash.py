"""Crash safety (see tests/campaigns/crash.py): 50 kill points, half of them with a power cut,
on dynamic and differencing images."""

from __future__ import annotations

from pathlib import Path

from tests.campaigns.crash import run_campaign


def test_fifty_kill_points_leave_consistent_images(tmp_path: Path) -> None:
    outcome = run_campaign(50, tmp_path, seed=3)
    assert outcome.kills == 50
    assert not outcome.failures, "\n".join(outcome.failures)
