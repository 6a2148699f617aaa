"""Putting a snapshot group back as it was: the one roll-back, used by the coordinator when a
snapshot fails and by the watchdog when the coordinator died before every disk was switched.

The order loses nothing written since the freeze:

1. every disk that writes to its new layer is switched back to its old top, while its guest is
   still frozen or paused;
2. every guest is thawed or resumed (both are idempotent, so a guest whose freeze never
   finished gets one too);
3. every new layer no disk may still write to is deleted. A layer is kept when its disk could
   not be switched back, when where the disk writes cannot be told, or when the caller names
   it in doubt once the guests run again (a switch still in flight).

Each step runs for all disks or guests at once under one deadline. The callers differ only in
what they know and how hard they try: the coordinator knows which disks it switched and tries
each call once; the watchdog asks the hypervisor where each disk writes and retries each call
until it gives up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vhdtool.vss.layers import remove_layer
from vhdtool.vss.parallel import run_all
from vhdtool.vss.plugin import Disk

Key = tuple[str, str]
"""(guest, disk id)."""


@dataclass(frozen=True, slots=True)
class NewLayer:
    """The layer a snapshot made for one disk."""

    guest: str
    disk: Disk
    """The disk as it was before the snapshot: ``disk.path`` is the old top."""
    layer: str

    @property
    def key(self) -> Key:
        return self.guest, self.disk.id


@dataclass(slots=True)
class Outcome:
    kept: set[Key] = field(default_factory=set)
    """Disks whose new layer was kept: they may still write to it."""
    stuck: dict[str, str] = field(default_factory=dict)
    """Guests neither thawed nor resumed, and why."""
    released_at: float = 0.0
    """When the last guest was released (``time.monotonic``)."""


def roll_back(
    layers: Iterable[NewLayer],
    guests: Iterable[str],
    *,
    writes_to_new: Callable[[NewLayer], bool | None],
    switch_back: Callable[[NewLayer], None],
    release: Callable[[str], None],
    timeout: float,
    in_doubt: Callable[[], set[Key]] = set,
) -> Outcome:
    """Switch back, release every guest, delete the new layers no disk may still write to.

    ``writes_to_new`` says whether a disk writes to its new layer (None: cannot tell, so the
    layer is kept); ``switch_back`` and ``release`` raise when they fail; ``timeout`` is the
    deadline of each parallel step, in seconds.
    """
    by_key = {nl.key: nl for nl in layers}
    where = {key: writes_to_new(nl) for key, nl in by_key.items()}
    kept = {key for key, on_new in where.items() if on_new is None}
    back = [key for key, on_new in where.items() if on_new]
    undone = run_all(back, lambda key: switch_back(by_key[key]), timeout)
    released = run_all(list(guests), release, timeout)
    kept |= set(undone.failures()) | set(undone.unfinished()) | in_doubt()
    for key, nl in by_key.items():
        if key not in kept:
            remove_layer(nl.layer)
    stuck = {name: str(e) for name, e in released.failures().items()}
    stuck.update(dict.fromkeys(released.unfinished(), "no answer"))
    return Outcome(kept, stuck, released.last_finish())
