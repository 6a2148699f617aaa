"""The click commands: each parses its options, calls one library function, and renders the result.

Errors: a VhdError leaves through ``main()`` as one line on stderr and its exit code; rendering
(tables, JSON, progress) lives in ``vhdtool.render``.
"""

from __future__ import annotations

import sys

import click

from vhdtool import render
from vhdtool.errors import VhdError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vhdtool")
def cli() -> None:
    """vhdtool: create, inspect, repair, convert, mount, serve and boot VHD disk images."""


def main() -> None:
    """Console entry point: VhdError becomes one line and an exit code, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        render.error("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        render.error(e.format_message())
        sys.exit(64 if isinstance(e, click.UsageError) else e.exit_code)
    except VhdError as e:
        render.error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        render.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:
        render.error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
