"""One consistency group over guests of several hypervisor plugins (``--guest runner:web --guest
libvirt:db``): the coordinator sees one hypervisor whose guests are named ``PLUGIN:NAME``, and
each call goes to the plugin that runs the guest. So the group has one freeze window (every
guest of every plugin frozen in parallel under one deadline), one switch phase and one roll-back.

Guests on several hosts are guests of several libvirt connections (``qemu+ssh://host/system``
URIs), which the libvirt plugin opens side by side.

The watchdog rebuilds the group from ``rescue_options``: one key per plugin, its value the JSON
of that plugin's own rescue options, or ``null`` for a plugin whose guests die with the
coordinator (nothing is left to thaw there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from vhdtool.errors import UsageError
from vhdtool.vss import registry
from vhdtool.vss.plugin import Disk, FreezeState, Guest, GuestStatus, Hypervisor, HypervisorError, RunState

NAME = "mixed"
SEP = ":"


def split_guest(guest: str, plugins: list[str], default: str) -> tuple[str, str]:
    """``PLUGIN:NAME`` -> (PLUGIN, NAME) when PLUGIN is an installed plugin; else (default, guest)."""
    prefix, sep, rest = guest.partition(SEP)
    if sep and prefix in plugins and rest:
        return prefix, rest
    return default, guest


def plan_group(default: str, guests: list[str], hv_opts: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Which plugin runs the group, its options and the guest names it knows them by.

    ``--guest PLUGIN:NAME`` names a guest of another plugin than ``--hypervisor`` and
    ``--hypervisor-opt PLUGIN:KEY=VALUE`` an option of that plugin; guests of several plugins make
    a mixed group, whose guests keep the ``PLUGIN:NAME`` form.
    """
    plugins = registry.names()
    split = [split_guest(g, plugins, default) for g in guests]
    pairs: dict[str, list[str]] = {}
    for pair in hv_opts:
        key, sep, value = pair.partition("=")
        owner, name = split_guest(key, plugins, default) if sep else (default, pair)
        pairs.setdefault(owner, []).append(f"{name}={value}" if sep else pair)
    used = list(dict.fromkeys(p for p, _ in split)) or [default]
    for owner in pairs:
        if owner not in used:
            raise UsageError(f"--hypervisor-opt for {owner}, but no guest of the group runs on {owner}")
    if len(used) == 1:
        return used[0], registry.parse_options(pairs.get(used[0], [])), [n for _, n in split]
    options = {p: json.dumps(registry.parse_options(pairs.get(p, []))) for p in used}
    return NAME, options, [f"{p}{SEP}{n}" for p, n in split]


def load_group(plugin: str, options: Mapping[str, str]) -> Hypervisor:
    """The hypervisor object ``plan_group``'s answer names: a mixed group or one plugin."""
    return MixedHypervisor(options) if plugin == NAME else registry.load(plugin, options)


class MixedHypervisor(Hypervisor):
    """The plugins of one group, each with its options: ``{PLUGIN: JSON of its options}``."""

    name = NAME

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self.members: dict[str, Hypervisor] = {}
        self.gone: set[str] = set()
        """Plugins whose guests died with the coordinator that made the plan."""
        try:
            for plugin, encoded in self.options.items():
                plugin_options = json.loads(encoded)
                if plugin_options is None:
                    self.gone.add(plugin)
                else:
                    self.members[plugin] = registry.load(plugin, plugin_options)
        except ValueError:
            self.close()
            raise UsageError(f"{NAME}: options are PLUGIN=JSON, not {self.options!r}") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def supports(cls) -> str | None:
        return None

    def _member(self, guest: str) -> tuple[Hypervisor, str]:
        plugin, _, name = guest.partition(SEP)
        hv = self.members.get(plugin)
        if hv is None:
            raise HypervisorError(f"{guest}: not a guest of {', '.join(self.members)} (PLUGIN{SEP}NAME)")
        return hv, name

    def describe(self, guest: str) -> tuple[str, str]:
        plugin, _, name = guest.partition(SEP)
        return plugin, name

    def list_guests(self) -> list[Guest]:
        return [Guest(f"{p}{SEP}{g.name}", g.detail) for p, hv in self.members.items() for g in hv.list_guests()]

    def list_disks(self, guest: str) -> list[Disk]:
        hv, name = self._member(guest)
        return hv.list_disks(name)

    def probe_agent(self, guest: str, timeout: float) -> bool:
        hv, name = self._member(guest)
        return hv.probe_agent(name, timeout)

    def freeze(self, guest: str, timeout: float) -> int:
        hv, name = self._member(guest)
        return hv.freeze(name, timeout)

    def thaw(self, guest: str, timeout: float) -> None:
        if guest.partition(SEP)[0] in self.gone:
            return
        hv, name = self._member(guest)
        hv.thaw(name, timeout)

    def pause(self, guest: str, timeout: float) -> None:
        hv, name = self._member(guest)
        hv.pause(name, timeout)

    def resume(self, guest: str, timeout: float) -> None:
        if guest.partition(SEP)[0] in self.gone:
            return
        hv, name = self._member(guest)
        hv.resume(name, timeout)

    def switch_disk(self, guest: str, disk: Disk, layer: str, timeout: float) -> None:
        hv, name = self._member(guest)
        hv.switch_disk(name, disk, layer, timeout)

    def status(self, guest: str, timeout: float) -> GuestStatus:
        if guest.partition(SEP)[0] in self.gone:
            return GuestStatus(RunState.STOPPED, FreezeState.UNKNOWN)  # gone with its coordinator
        hv, name = self._member(guest)
        return hv.status(name, timeout)

    def layer_path(self, guest: str, disk: Disk, group: str) -> str:
        hv, name = self._member(guest)
        return hv.layer_path(name, disk, group)

    def layer_cost(self, guest: str, disk: Disk) -> int:
        hv, name = self._member(guest)
        return hv.layer_cost(name, disk)

    def new_layer(self, guest: str, disk: Disk, path: str) -> str:
        hv, name = self._member(guest)
        return hv.new_layer(name, disk, path)

    def rescue_options(self) -> dict[str, str] | None:
        rescue = {p: hv.rescue_options() for p, hv in self.members.items()}
        if all(r is None for r in rescue.values()):
            return None
        return {p: json.dumps(r) for p, r in rescue.items()}

    def keeps_layers(self) -> bool:
        return any(hv.keeps_layers() for hv in self.members.values())

    def close(self) -> None:
        for hv in self.members.values():
            hv.close()
