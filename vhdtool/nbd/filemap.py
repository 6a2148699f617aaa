"""Where the bytes of a device live in files, so that reads can be spliced to the socket.

``vhdtool.format.placement`` says where each run lives (the mapping `vhdtool map` prints); this
joins adjacent runs into the ranges a splice moves. Nothing here reads or parses the files.

Devices that cannot place their bytes (a composite, a device in memory) give None, and the
caller reads them with ``pread``. Block positions never move while an image is open (only offline commands
rewrite a BAT), so a run located here stays valid for the read that asked for it.
"""

from __future__ import annotations

from vhdtool.format.blockdev import BlockDevice, NotPlaceable, Placement
from vhdtool.format.placement import joined


def locate(dev: BlockDevice, offset: int, length: int) -> list[Placement] | None:
    """The runs of [offset, offset + length) placed in their files, adjacent ones joined; None if
    ``dev`` cannot place its bytes in files."""
    if not dev.can_place:
        return None
    try:
        return list(joined(dev.place(offset, length)))
    except NotPlaceable:
        return None
