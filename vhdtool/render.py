"""The one module that talks to the terminal: errors, warnings, tables, JSON, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, BinaryIO

# rich is imported lazily: most commands print a line or JSON, and start-up time counts
# (a quick command such as `vhdtool create` is mostly start-up; bench/ and the README time it).


@cache
def _console(to_stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=to_stderr, soft_wrap=True)


def error(message: str) -> None:
    """One line on stderr: 'vhdtool: error: ...'."""
    print(f"vhdtool: error: {message}", file=sys.stderr, flush=True)


def warning(message: str) -> None:
    print(f"vhdtool: warning: {message}", file=sys.stderr, flush=True)


def line(text: str = "", flush: bool = False) -> None:
    """One line of a command's result on stdout; ``flush`` for a line a waiting reader needs now
    (a server's address, a mount that is ready)."""
    print(text, flush=flush)


def note(message: str) -> None:
    """One line on stderr that is neither an error nor a warning (an empty listing's where, a step)."""
    print(message, file=sys.stderr, flush=True)


def binary_stdout() -> BinaryIO:
    """Standard output for bytes (the content of a file inside an image)."""
    return sys.stdout.buffer


def ask(question: str, choices: list[str], default: str) -> str:
    """One of ``choices``, asked on the terminal."""
    import click

    return str(click.prompt(question, type=click.Choice(choices), default=default))


def print_json(document: Any) -> None:
    import json  # only --json needs it

    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_json_lines(items: list[Any]) -> None:
    """A JSON list with one compact item a line, as qemu-img map prints it: a map of many runs is
    encoded by json's C encoder (an indented document goes through its Python one)."""
    import json

    sys.stdout.write("[" + ",\n".join(json.dumps(item) for item in items) + "]\n")
    sys.stdout.flush()


def key_value_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    """Aligned 'key  value' lines, keys in bold on a terminal.

    Written by hand rather than as a rich table: rich's import is a large share of a `vhdtool
    info`'s start-up, and rich pads every line with trailing spaces and reads brackets in values
    (a file named 'disk[1].vhd') as markup.
    """
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    width = max((len(key) for key, _ in rows), default=0)
    lines = [title] if title else []
    lines += [f"{bold}{key.ljust(width)}{plain}  {value}" for key, value in rows]
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A boxed table on a terminal; piped, one tab-separated line per row with every value whole
    (a table fitted to a width would cut paths short)."""
    if not sys.stdout.isatty():
        lines = [title] if title else []
        lines += ["\t".join(cell.replace("\n", "; ") for cell in row) for row in [columns, *rows]]
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        return
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    _console().print(t)


class _NoProgress:
    def advance(self, n: int) -> None:
        pass


class _RichProgress:
    def __init__(self, progress: Any, task: Any) -> None:
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(True),
        transient=True,
    ) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total))


def created(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "filename": result.path,
                "format": "vpc",
                "type": result.type,
                "virtual-size": result.size,
                "cluster-size": result.block_size,
                "backing-filename": result.parent,
            }
        )
        return
    what = f"{result.type} VHD of {human_size(result.size)} ({result.size} bytes)"
    if result.parent:
        what += f" over {result.parent}"
    print(f"created {result.path}: {what}")


def human_size(n: int) -> str:
    from vhdtool.format.rules import human_size as _human

    return _human(n)


def map_table(entries: list[Any]) -> None:
    """qemu-img map's human format: fixed columns and whole paths (a table would cut them short);
    C's %#x prints 0 as 0."""
    rows = [f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File"]
    for e in entries:
        if e.parent_missing:
            missing = "-".ljust(16) + "(the missing parent)"
            rows.append(f"{e.offset:#x}".ljust(16) + f"{e.length:#x}".ljust(16) + missing)
        elif not e.zero:
            columns = (e.offset, e.length, e.file_offset)
            rows.append("".join(f"{n:#x}".ljust(16) if n else "0".ljust(16) for n in columns) + (e.path or ""))
    sys.stdout.write("".join(row + "\n" for row in rows))
    sys.stdout.flush()


def image_info(docs: list[dict[str, Any]], as_json: bool, chain: bool) -> None:
    if as_json:
        print_json(docs if chain else docs[0])
        return
    for depth, doc in enumerate(docs):
        if depth:
            print()
        _one_image(doc)


def _one_image(doc: dict[str, Any]) -> None:
    d = doc["format-specific"]["data"]
    rows = [
        ("image", doc["filename"]),
        ("type", d["disk-type"]),
        ("virtual size", f"{human_size(doc['virtual-size'])} ({doc['virtual-size']} bytes)"),
        ("disk size", f"{human_size(doc['actual-size'])} (file {doc['file-size']} bytes)"),
    ]
    if "chs-size" in d:
        rows.append(("CHS size", f"{d['chs-size']} bytes (qemu 7.2 reads {d['qemu-7.2-size']})"))
    chs = d["chs"]
    rows += [
        ("geometry", f"{chs['cylinders']}/{chs['heads']}/{chs['sectors-per-track']} (C/H/S)"),
        (
            "creator",
            f"{d['creator-application']!r} {d['creator-version']} on {d['creator-host-os']!r} ({d['creator-name']})",
        ),
        ("uuid", d["uuid"]),
        ("created", d["timestamp"]),
    ]
    if d["original-size"] != d["current-size"]:
        rows.append(("original size", str(d["original-size"])))
    if "block-size" in d:
        rows += [
            ("block size", human_size(d["block-size"])),
            ("blocks", f"{d['allocated-blocks']} of {d['max-table-entries']} allocated"),
        ]
    checks = f"footer {d['footer-checksum']}, copy {d['footer-copy']}"
    if "header-checksum" in d:
        checks += f", header {d['header-checksum']}"
    rows.append(("checksums", checks))
    if d.get("saved-state"):
        rows.append(("saved state", "set"))
    if "parent-uuid" in d:
        rows += [
            ("parent", doc.get("full-backing-filename", "not found")),
            ("parent name", d["parent-name"]),
            ("parent uuid", d["parent-uuid"]),
        ]
        for loc in d["parent-locators"]:
            rows.append((f"locator {loc['slot']}", f"{loc['code']} {loc['path']}"))
    key_value_table(rows)
    for w in doc.get("warnings", []):
        warning(w)


def check_report(report: Any, as_json: bool) -> None:
    if as_json:
        print_json(report.as_json())
        return
    for f in report.findings:
        print(f"{f.severity}: {f.message}")
    for code, n in report.not_listed.items():
        print(f"... and {n} more findings like these ({code}); '--json' counts them the same way")
    corrupt, leaks, errors = report.count("corruption"), report.count("leak"), report.count("error")
    if errors:
        print(f"{report.path}: could not be checked completely ({errors} error(s)); {corrupt} corruption(s) found")
    elif corrupt:
        print(f"{report.path}: {corrupt} corruption(s), {leaks} leak(s) found")
    elif leaks:
        print(
            f"{report.path}: {leaks} leak(s) ({report.leaked_bytes} bytes); no corruption. "
            "'vhdtool repair' reclaims leaked space"
        )
    elif report.total_blocks:
        print(f"{report.path}: no errors found ({report.allocated_blocks}/{report.total_blocks} blocks allocated)")
    else:
        print(f"{report.path}: no errors found")
