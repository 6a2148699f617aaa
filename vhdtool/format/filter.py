"""A device over another that passes through everything it does not change (nbdkit's filters).

A filter overrides only what it changes: ``PartitionView`` shifts offsets; every other request,
capability and answer (``can_trim``, ``layers()``, ``place()``...) goes to the device below as
it is. It closes the device below only when it opened it (``owns_lower``).
"""

from __future__ import annotations

from collections.abc import Iterator

from vhdtool.format.blockdev import BlockDevice, DeviceBase, Extent, Placement


class Filter(DeviceBase):
    """``lower`` seen through a layer that changes nothing until a subclass says so."""

    def __init__(self, lower: BlockDevice, owns_lower: bool = False) -> None:
        self.lower = lower
        self.owns_lower = owns_lower
        self.size = lower.size
        self.path = lower.path
        self.writable = lower.writable

    def pread(self, offset: int, length: int) -> bytes:
        return self.lower.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.lower.pwrite(offset, data)

    def flush(self) -> None:
        self.lower.flush()

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        return self.lower.extents(offset, length)

    @property
    def can_zero(self) -> bool:
        return self.writable and self.lower.can_zero

    def zero(self, offset: int, length: int) -> None:
        self.lower.zero(offset, length)

    @property
    def can_trim(self) -> bool:
        return self.writable and self.lower.can_trim

    def trim(self, offset: int, length: int) -> None:
        self.lower.trim(offset, length)

    def layers(self) -> list[BlockDevice]:
        return self.lower.layers()

    @property
    def can_place(self) -> bool:
        return self.lower.can_place

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        return self.lower.place(offset, length)

    def place_own(self, offset: int, length: int, depth: int) -> Iterator[Placement]:
        return self.lower.place_own(offset, length, depth)

    def close(self) -> None:
        if self.owns_lower:
            self.lower.close()

    def close_chain(self) -> None:
        self.lower.close_chain()
