"""The records a state folder keeps are its NAME.json files."""

from __future__ import annotations

from pathlib import Path

from vhdtool.folders import record_names


def test_record_names_lists_json_records_sorted(tmp_path: Path) -> None:
    for name in ("b.json", "a.json", "a.lock", "c.json.tmp", "sock"):
        (tmp_path / name).touch()
    assert record_names(str(tmp_path)) == ["a", "b"]
    assert record_names(str(tmp_path / "missing")) == []
