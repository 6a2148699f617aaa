"""Where the bytes of a device live in files, so that reads can be spliced to the socket.

``vhdtool.format.placement`` says where each run lives (the mapping `vhdtool map` prints); this
joins adjacent runs into the ranges a splice moves. Nothing here reads or parses the files.

Devices of any other kind (partition views, overlays) give None, and the caller reads them
with ``pread``. Block positions never move while an image is open (only offline commands
rewrite a BAT), so a run located here stays valid for the read that asked for it.
"""

from __future__ import annotations

from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.placement import NotPlaceable, place

FileRun = tuple[int, int, int, int]
"""(disk offset, length, file descriptor, file offset); descriptor -1 for a run of zeros."""


def locate(dev: BlockDevice, offset: int, length: int) -> list[FileRun] | None:
    """The runs of [offset, offset + length) as file ranges, adjacent ones joined; None if
    ``dev`` is not a chain of raw/fixed/dynamic/differencing files."""
    runs: list[FileRun] = []
    try:
        for placed in place(dev, offset, length):
            _add(runs, placed.offset, placed.length, placed.fd, placed.file_offset)
    except NotPlaceable:
        return None
    return runs


def _add(runs: list[FileRun], offset: int, length: int, fd: int, file_offset: int) -> None:
    if runs:
        last_offset, last_length, last_fd, last_file = runs[-1]
        contiguous = fd == -1 or last_file + last_length == file_offset
        if last_fd == fd and last_offset + last_length == offset and contiguous:
            runs[-1] = (last_offset, last_length + length, fd, last_file)
            return
    runs.append((offset, length, fd, file_offset))
