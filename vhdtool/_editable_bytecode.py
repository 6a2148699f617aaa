"""Build hook: an editable install compiles the checkout's modules, as pip does for a regular install.

pip compiles every module of a wheel it installs, so an installed vhdtool starts from .pyc files. An
editable install's wheel holds no modules, only a path entry to the checkout, so nothing compiles
them; where PYTHONDONTWRITEBYTECODE is set (CI images, containers) Python never writes them either,
and every command compiles again the forty-odd modules it imports, which costs more than the work
of `map` or `create` itself. Python checks each .pyc against its source's size and time, so a module
edited after the install is compiled afresh, never run stale.

Hatchling loads this file by path (pyproject.toml, [tool.hatch.build.targets.wheel.hooks.custom]);
it is left out of the wheel and is not part of the package.
"""

from __future__ import annotations

import compileall
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableBytecodeHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            compileall.compile_dir(Path(self.root) / "vhdtool", quiet=1)
