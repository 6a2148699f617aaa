"""Options, argument types and the progress adapter that several command families share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from vhdtool import render

QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (no progress bar).")
SYNC = click.option(
    "--sync",
    is_flag=True,
    help="Flush a new file to the disk before it appears, as qemu-img does with -t writeback "
    "(a file replaced with --force always is).",
)


def parse_size(text: str | None, what: str = "size") -> int | None:
    """A size option's text as bytes (512M, 127G, ...), None when the option was not given."""
    if text is None:
        return None
    from vhdtool.format import rules  # only commands given a size need the size rules

    return rules.parse_absolute_size(text, what)


def octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{text!r} is not a permission mode (0 to 0777)")
    return mode


@contextlib.contextmanager
def progress(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """An ops progress(done, total) callback drawing render.progress's bar from the first report."""
    with contextlib.ExitStack() as stack:
        state: dict[str, Any] = {}

        def report(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = stack.enter_context(render.progress(description, total, enabled))
                state["done"] = 0
            state["bar"].advance(done - state["done"])
            state["done"] = done

        yield report
