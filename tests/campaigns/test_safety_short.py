"""A short differential safety run as part of the tests (the long run is
`python -m tests.campaigns.safety --execs N`)."""

from __future__ import annotations

from pathlib import Path

from tests.campaigns.safety import run_campaign


def test_short_safety_run_loses_no_data(tmp_path: Path) -> None:
    stats = run_campaign(60, seed=20261203, folder=tmp_path)
    assert stats.execs == 60
    # commands ran to the end and their results were compared, not only refused
    assert sum(n for key, n in stats.outcomes.items() if key.endswith((":ran", ":peers-disagree"))) > 15
    assert not stats.bugs, "\n".join(f"{b.kind} on {b.seed}: {b.detail}" for b in stats.bugs[:3])
