"""The vhdtool command: a small root group whose commands are loaded on first use.

Each command family is a module of this package; a command parses its options, calls one
library function and prints through ``vhdtool.render``. ``COMMANDS`` says where each command is
defined, so that a run imports only the module of the command it runs (``--help`` loads them
all to list their short helps). A VhdError leaves through ``main()`` as one line on stderr and
its exit code.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, NoReturn

import click

from vhdtool import __version__, render
from vhdtool.cli import demand
from vhdtool.cli.lazy import LazyGroup
from vhdtool.errors import VhdError

COMMANDS = {
    "create": "vhdtool.cli.images:create",
    "info": "vhdtool.cli.images:info",
    "check": "vhdtool.cli.images:check",
    "repair": "vhdtool.cli.images:repair",
    "reset-id": "vhdtool.cli.images:reset_id",
    "resize": "vhdtool.cli.images:resize",
    "compact": "vhdtool.cli.images:compact",
    "merge": "vhdtool.cli.chains:merge",
    "rebase": "vhdtool.cli.chains:rebase",
    "relink": "vhdtool.cli.chains:relink",
    "convert": "vhdtool.cli.data:convert",
    "map": "vhdtool.cli.data:map_command",
    "compare": "vhdtool.cli.data:compare",
    "serve": "vhdtool.cli.serving:serve",
    "snapshot": "vhdtool.cli.snapshots:snapshot",
    "run": "vhdtool.cli.guests:run_command",
    "migrate": "vhdtool.cli.guests:migrate_command",
    "ps": "vhdtool.cli.guests:ps_command",
    "mount": "vhdtool.cli.mounts:mount_command",
    "umount": "vhdtool.cli.mounts:umount_command",
    "build": "vhdtool.cli.files:build",
    "ls": "vhdtool.cli.files:ls_command",
    "cat": "vhdtool.cli.files:cat_command",
    "cp": "vhdtool.cli.files:cp_command",
    "rm": "vhdtool.cli.files:rm_command",
    "mkdir": "vhdtool.cli.files:mkdir_command",
}

_EXIT_CODES = "Exit status: 0 done; 1 error{}; 64 bad options or arguments."
_REFUSALS = {
    "merge": " or refused for safety (other disks depend on the parent; --force overrides)",
    "resize": " or refused for safety (a shrink over stored data; --force overrides)",
    "compact": " or refused for safety (the saved-state flag is set)",
    "rebase": " or refused (a loop, a missing or mismatched parent)",
    "relink": " or refused (a parent not found, or with --check-content one that reads differently)",
}


def document_exit_codes(name: str, command: click.Command) -> None:
    """Every command's --help ends with its exit codes (those that differ say so in their text)."""
    if isinstance(command, click.Group):
        for sub_name, sub_command in command.commands.items():
            document_exit_codes(sub_name, sub_command)
    elif command.help and "Exit status" not in command.help and "Exit codes" not in command.help:
        command.epilog = _EXIT_CODES.format(_REFUSALS.get(name, ""))


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    prepare=document_exit_codes,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(version=__version__, prog_name="vhdtool")
def cli() -> None:
    """vhdtool: create, inspect, repair, convert, mount, serve and boot VHD disk images."""


def __getattr__(name: str) -> Any:
    """``vhdtool.cli.<command>`` is that command's click object, loaded on first use."""
    command = cli.get_command(None, name) if name in COMMANDS else None
    if command is None:
        raise AttributeError(f"module 'vhdtool.cli' has no attribute {name!r}")
    return command


def main() -> NoReturn:
    """Console entry point: VhdError becomes one line and an exit code, never a traceback."""
    demand.install()
    try:
        _run()
    except SystemExit as e:
        _leave(0 if e.code is None else e.code)
    _leave(0)


def _leave(code: int | str) -> NoReturn:
    """End the command with exit status ``code``.

    Python's own exit tears down every module and object the command loaded, which costs a short
    command several milliseconds (a tenth of `map --json`). When it has nothing else to do there,
    no other thread to wait for and no exit handler to run, the output is flushed and the process
    ends at once: vhdtool closes its files itself (no finaliser of its writes anything), so
    nothing is lost. Otherwise Python exits as usual."""
    if isinstance(code, int) and threading.active_count() == 1 and atexit._ncallbacks() == 0:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # the reader went away: as a BrokenPipeError in the command
            os._exit(1)
        os._exit(code)
    sys.exit(code)


def _run() -> None:
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
