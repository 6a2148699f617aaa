"""The one module that talks to the terminal: errors, warnings, tables, JSON, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def error(message: str) -> None:
    """One line on stderr: 'vhdtool: error: ...'."""
    print(f"vhdtool: error: {message}", file=sys.stderr, flush=True)


def warning(message: str) -> None:
    print(f"vhdtool: warning: {message}", file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def key_value_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    stdout.print(table)


def table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    stdout.print(t)


class _NoProgress:
    def advance(self, n: int) -> None:
        pass


class _RichProgress:
    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)


@contextmanager
def progress(description: str, total: int, enabled: bool = True) -> Iterator[_NoProgress | _RichProgress]:
    """A bytes/speed/ETA bar on stderr, shown only when enabled and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield _NoProgress()
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    ) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total))
