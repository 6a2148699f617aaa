"""The files of a raw view: ``disk`` (the whole virtual disk) and ``p1``..``pN`` (its partitions).

Each is a BlockDevice: the disk itself, or a partition window over it from ``vhdtool.disk``. The
partition table is read again after a write through ``disk`` touched the sectors a table lives
in (the MBR and primary GPT at the start, the backup GPT at the end), so partitioning the disk
through the view (sfdisk MOUNTPOINT/disk) makes the new p-files appear. A disk without a
partition table has no p-files.
"""

from __future__ import annotations

import threading

from vhdtool.disk.partitions import partition_view, read_table
from vhdtool.errors import VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.rules import SECTOR

TABLE_HEAD = 34 * SECTOR
"""MBR, GPT header and a standard 128-entry GPT array."""
TABLE_TAIL = 33 * SECTOR
"""Backup GPT array and header at the end of the disk."""
DISK = "disk"


class RawTree:
    """Name -> BlockDevice for the raw view; safe to use from many FUSE threads."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self._lock = threading.Lock()
        self._files: dict[str, BlockDevice] | None = None

    def _current(self) -> dict[str, BlockDevice]:
        with self._lock:
            if self._files is None:
                self._files = {DISK: self.dev, **self._partitions()}
            return self._files

    def _partitions(self) -> dict[str, BlockDevice]:
        try:
            table = read_table(self.dev)
        except VhdError:
            return {}  # a table being rewritten, or damaged: only the disk is shown until it reads again
        if table.scheme == "none":
            return {}
        return {f"p{p.number}": partition_view(self.dev, p) for p in table.partitions if p.start < self.dev.size}

    def names(self) -> list[str]:
        return list(self._current())

    def get(self, name: str) -> BlockDevice | None:
        return self._current().get(name)

    def disk_written(self, offset: int, length: int) -> None:
        """Note a write through ``disk``: the partition list is read again if it hit a table."""
        if offset < TABLE_HEAD or offset + length > self.dev.size - TABLE_TAIL:
            with self._lock:
                self._files = None
