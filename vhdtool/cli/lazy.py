"""A click group whose commands live in modules imported only when a command is used.

click's documented LazyGroup pattern: the group knows each command's name and where it is
defined, and imports that module only when the command is invoked (or when ``--help`` lists
every command, which loads them all). Importing every command module up front would make each
`vhdtool` run pay for thirty commands' option declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

import click


class LazyGroup(click.Group):
    """``lazy_commands`` maps a command name to ``"module:attribute"``; ``prepare`` is called once
    on each command as it is loaded."""

    def __init__(
        self,
        *args: Any,
        lazy_commands: dict[str, str],
        prepare: Callable[[str, click.Command], None] = lambda name, command: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands
        self.prepare = prepare

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            # click suggests close names from the commands loaded so far: offer every command
            raise click.exceptions.NoSuchCommand(
                e.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def _load(self, name: str) -> click.Command:
        module, _, attribute = self.lazy_commands[name].partition(":")
        command = getattr(import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[name]} is not a click command")
        self.prepare(name, command)
        return command
