"""The files a snapshot adds: group IDs, checking room for the new write layers, and what
happens to those layers around the switch.

A snapshot leaves a disk's current top image where it is — it becomes the point-in-time image —
and puts a new differencing child beside it: an overlay (``vhdtool.ops.overlay``, which names
and creates it) tagged with the group, ``disk.vhd`` -> ``disk.vhd.<group>.vhd``.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable

from vhdtool.errors import VhdError
from vhdtool.format.rules import DEFAULT_BLOCK_SIZE, human_size

RESERVE = 64 << 20
"""Free space each filesystem must keep beyond the new layers' own size, so that guests can go on
writing into them; a snapshot that would leave less is refused before any guest is touched."""

_FIXED_COST = 64 << 10
"""A new layer's bytes besides its BAT: footer, its copy, dynamic header, parent locators."""


class SpaceError(VhdError):
    """Not enough free space for the new layers."""


def new_group_id(now: float | None = None) -> str:
    """A sortable, readable group ID: UTC time and four random hex digits."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def layer_cost(top: str) -> int:
    """Bytes a new differencing child of ``top`` takes when created (mostly its BAT)."""
    from vhdtool.format.metadata import read_metadata

    meta = read_metadata(top)  # the header only: no lock, so a top a running guest writes is read too
    block = meta.block_size or DEFAULT_BLOCK_SIZE
    entries = math.ceil(meta.virtual_size / block)
    return _FIXED_COST + -(-entries * 4 // 512) * 512


def check_space(layers: Iterable[tuple[str, int]], reserve: int = RESERVE) -> None:
    """Refuse when a filesystem cannot hold its new layers plus ``reserve`` bytes.

    ``layers`` are (path of the new layer, bytes it will take) pairs.
    """
    need: dict[int, int] = defaultdict(int)
    where: dict[int, str] = {}
    for path, cost in layers:
        folder = os.path.dirname(os.path.abspath(path))
        dev = os.stat(folder).st_dev
        need[dev] += cost
        where.setdefault(dev, folder)
    for dev, total in need.items():
        st = os.statvfs(where[dev])
        free = st.f_bavail * st.f_frsize
        if free < total + reserve:
            raise SpaceError(
                f"{where[dev]}: {human_size(free)} free, the new layers need {human_size(total)} "
                f"plus {human_size(reserve)} for the guests to keep writing"
            )


def remove_layer(path: str) -> bool:
    """Delete a new layer; True if there was one. A missing file is not an error (idempotent)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def settle_parent_time(layer: str) -> None:
    """Give the point-in-time image the modification time its new layer recorded for it.

    The layer is created (and stamps its parent's mtime) before the freeze; the guest writes to
    the parent until the switch, so every later open of the chain would warn that the parent
    changed after the child was made. Those writes belong to the point in time — the child was
    made for the parent as it stands at the switch — so once the switch has flushed the parent,
    its mtime is set back to the stamp. Layers that are not VHDs are left alone.
    """
    from vhdtool.format.chain import find_parent
    from vhdtool.format.metadata import read_metadata
    from vhdtool.format.rules import from_vhd_timestamp
    from vhdtool.format.structs import DISK_TYPE_DIFFERENCING

    try:
        fd = os.open(layer, os.O_RDONLY)
        try:
            meta = read_metadata(layer, fd)
        finally:
            os.close(fd)
        if meta.disk_type != DISK_TYPE_DIFFERENCING or meta.header is None:
            return
        stamp = int(meta.header.parent_timestamp)
        if stamp:
            parent = find_parent(meta)
            os.utime(parent, (os.stat(parent).st_atime, from_vhd_timestamp(stamp)))
    except (VhdError, OSError):
        return
