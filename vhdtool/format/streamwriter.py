"""Writing a new VHD front to back, in one pass: the one writer `convert` (and `build`, through it)
lays images out with.

The caller asks, for each run of the disk's data and in disk order, where in the file it goes
(``place``); it writes the bytes there itself (from its worker threads as it likes) and calls
``finish`` last. A dynamic image is laid out directly (footer copy, header, BAT, then the blocks
in the order their first data came, then the footer) rather than through block allocation,
which would rewrite the footer once per block; its BAT and header are written by ``finish``.
The file is a temporary one the caller renames into place only once it is complete
(``layout.write_new_file``), so no crash ordering is needed here.
"""

from __future__ import annotations

import os
import sys
from array import array

from vhdtool.format import rules
from vhdtool.format.blockdev import pwrite_all
from vhdtool.format.layout import SparseImageSpec, footer_fields, sparse_image_bytes
from vhdtool.format.sparselayout import BAT_ENTRY_BYTES, BAT_OFFSET, BlockLayout, round_up, table_entries
from vhdtool.format.structs import DISK_TYPE_FIXED, NO_DATA_OFFSET, UNALLOCATED, build_footer


class FixedWriter:
    """A fixed VHD: the disk at its own offsets, the footer after it. Unwritten runs stay holes."""

    def __init__(
        self, fd: int, size: int, unique_id: bytes, timestamp: int, creator: rules.Creator = rules.VHDTOOL_CREATOR
    ) -> None:
        self.fd = fd
        self.size = size
        self._footer = build_footer(
            footer_fields(DISK_TYPE_FIXED, size, NO_DATA_OFFSET, unique_id, timestamp, creator=creator)
        )
        os.ftruncate(fd, size)

    def place(self, offset: int) -> int:
        return offset

    def finish(self) -> None:
        pwrite_all(self.fd, self.size, self._footer)


class DynamicWriter:
    """A dynamic VHD laid out block by block as data comes (see the module doc).

    Each block's data starts on a page of the file (its bitmap just before), as Windows lays
    blocks out; every sector of a block is marked present, as qemu writes it, so a block holds
    exactly what was written to it and zeros elsewhere.
    """

    def __init__(
        self,
        fd: int,
        path: str,
        size: int,
        block_size: int,
        unique_id: bytes,
        timestamp: int,
        creator: rules.Creator = rules.VHDTOOL_CREATOR,
    ) -> None:
        self.fd = fd
        self.layout = BlockLayout(block_size)
        spec = SparseImageSpec(size, block_size, unique_id, timestamp, creator=creator)
        self._head, self._footer = sparse_image_bytes(path, spec)
        self.bat = array("I", [UNALLOCATED]) * table_entries(size, block_size)
        self._bitmap = self.layout.full_bitmap()
        self._cursor = round_up(len(self._head))

    def place(self, offset: int) -> int:
        """The file offset of disk ``offset``; the first call for a block allocates it (writes its
        bitmap after the blocks placed so far). Runs passed in must not cross a block boundary."""
        block, in_block = divmod(offset, self.layout.block_size)
        entry = self.bat[block]
        if entry == UNALLOCATED:
            start = self.layout.next_start(self._cursor)
            entry = self.bat[block] = self.layout.entry_for(start)
            pwrite_all(self.fd, start, self._bitmap)
            self._cursor = start + self.layout.span
        return self.layout.data_offset(entry, in_block)

    def finish(self) -> None:
        """Write the BAT, the header and the footer copy in front, and the footer after the blocks."""
        bat = array("I", self.bat)
        if sys.byteorder == "little":
            bat.byteswap()
        head = bytearray(self._head)
        head[BAT_OFFSET : BAT_OFFSET + BAT_ENTRY_BYTES * len(bat)] = bat.tobytes()
        pwrite_all(self.fd, 0, head)
        pwrite_all(self.fd, self._cursor, self._footer)
