"""What fixed, dynamic and differencing images share beyond the BlockDevice protocol."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vhdtool.errors import ReadOnlyError, io_error
from vhdtool.format.blockdev import BlockDevice, DeviceBase, Placement, place_layers
from vhdtool.format.metadata import ImageMetadata


class ImageBase(DeviceBase):
    """Warnings collected while opening, the parent chain, and what every image can do: trim
    when writable, place its bytes when every layer below can, close the parents it opened."""

    def __init__(self, meta: ImageMetadata, fd: int, writable: bool, parent: BlockDevice | None = None) -> None:
        self.meta = meta
        self.warnings: list[str] = list(meta.warnings)
        self.path = meta.path
        self.size = meta.virtual_size
        self.writable = writable
        self.parent: Any = parent
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def chain(self) -> Iterator[ImageBase]:
        """This image, then its parent, grandparent, ... (the top first)."""
        image: ImageBase | None = self
        while image is not None:
            yield image
            image = image.parent if isinstance(image.parent, ImageBase) else None

    def layers(self) -> list[BlockDevice]:
        below = self.parent.layers() if self.parent is not None else []
        return [self, *below]

    @property
    def can_place(self) -> bool:
        return self.parent is None or bool(self.parent.can_place)

    def place(self, offset: int = 0, length: int | None = None) -> Iterator[Placement]:
        return place_layers(self, offset, length)

    def all_warnings(self) -> list[str]:
        return [w for image in self.chain() for w in image.warnings]

    # The BlockDevice operations: the image classes implement _pread/_pwrite/_flush/_close; an
    # OSError from the file (EIO, ENOSPC, a file cut short under us) leaves as one IoError that
    # names the file, like every other error a user can meet.

    def pread(self, offset: int, length: int) -> bytes:
        try:
            return self._pread(offset, length)
        except OSError as e:
            raise io_error(self.path, "read", e) from None

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        try:
            self._pwrite(offset, data)
        except OSError as e:
            raise io_error(self.path, "write", e) from None

    def flush(self) -> None:
        try:
            self._flush()
        except OSError as e:
            raise io_error(self.path, "flush", e) from None

    @property
    def can_trim(self) -> bool:
        return self.writable

    def trim(self, offset: int, length: int) -> None:
        """Discard a range (NBD TRIM, FUSE punch-hole): afterwards it may read as zeros."""
        if not self.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only")
        try:
            self._trim(offset, length)
        except OSError as e:
            raise io_error(self.path, "trim", e) from None

    owns_parent = False
    """True when this image opened its parent itself (``open_image`` resolving a chain): closing
    it closes that parent too. A layer opened over a device its caller holds (``open_over``)
    leaves the device open for its owner."""

    def close(self) -> None:
        """Release what this image owns: its file and lock, and the parents it opened."""
        try:
            self._close()
        except OSError as e:
            raise io_error(self.path, "close", e) from None
        finally:
            if self.owns_parent and self.parent is not None:
                self.parent.close()

    def _pread(self, offset: int, length: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    def _flush(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _trim(self, offset: int, length: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"<{type(self).__name__} {self.path!r} {self.meta.type_name} {self.meta.virtual_size} {mode}>"
