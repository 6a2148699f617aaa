"""Finding hypervisor plugins: every entry point in the group ``vhdtool.hypervisors``.

Third parties add a hypervisor by declaring such an entry point in their own package; vhdtool's
three plugins are declared the same way in its pyproject.toml, so no plugin is special.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points

from vhdtool.errors import UsageError, VhdError
from vhdtool.vss.plugin import Hypervisor

GROUP = "vhdtool.hypervisors"
DEFAULT = "runner"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    return sorted(_entry_points())


def plugin_class(name: str) -> type[Hypervisor]:
    """The class registered as ``name``; a UsageError naming the known ones if there is none."""
    found = _entry_points().get(name)
    if found is None:
        known = ", ".join(names()) or "none installed"
        raise UsageError(f"unknown hypervisor {name!r} (known: {known})")
    try:
        cls = found.load()
    except ImportError as e:
        raise VhdError(f"hypervisor {name}: plugin {found.value} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Hypervisor)):
        raise VhdError(f"hypervisor {name}: {found.value} is not a vhdtool.vss.plugin.Hypervisor")
    return cls


def load(name: str, options: Mapping[str, str] | None = None) -> Hypervisor:
    """An instance of plugin ``name``, after its ``supports()`` check passed."""
    cls = plugin_class(name)
    reason = cls.supports()
    if reason is not None:
        raise VhdError(f"hypervisor {name} is not usable here: {reason}")
    return cls(options)


def parse_options(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["guests=8", "fail=5:freeze"]`` -> a dict; a key given twice keeps every value joined
    by commas (``fail=1:freeze`` twice becomes ``1:freeze,...``)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--hypervisor-opt takes KEY=VALUE, not {pair!r}")
        key = key.strip()
        options[key] = f"{options[key]},{value}" if key in options else value
    return options
