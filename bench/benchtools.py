"""What the benchmark scripts share: the vhdtool command they time, their common options and
their scratch folder. The scripts run as files (`python bench/bench_NAME.py`), so they import
this module by its own name from their folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

VHDTOOL = [sys.executable, "-m", "vhdtool"]


def vhdtool_command() -> list[str]:
    """The installed vhdtool command beside this interpreter (as users run it), else `-m vhdtool`."""
    script = Path(sys.executable).with_name("vhdtool")
    return [str(script)] if script.exists() else list(VHDTOOL)


def bench_parser(
    doc: str, *, size_mib: int | None = None, figures: bool = False, quick: str | None = None
) -> argparse.ArgumentParser:
    """The options of a benchmark that makes its data in a scratch folder: --rounds and --dir,
    --size-mib when given a default, --json when it keeps ``figures`` for --plot, and --quick with
    its ``quick`` help (the script applies what --quick means)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if size_mib is not None:
        ap.add_argument("--size-mib", type=int, default=size_mib)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the scratch files (default: $TMPDIR)")
    if figures:
        ap.add_argument("--json", default=None, help="also write the figures to this file (for --plot)")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    return ap


def scratch_folder(name: str, parent: str | None) -> Path:
    """A new folder for one benchmark's files, in ``parent`` or $TMPDIR; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=parent))
