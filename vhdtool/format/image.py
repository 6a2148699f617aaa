"""What fixed, dynamic and differencing images share beyond the BlockDevice protocol."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vhdtool.errors import ReadOnlyError, io_error
from vhdtool.format.metadata import ImageMetadata


class ImageBase:
    """Context manager, warnings collected while opening, and the parent chain."""

    meta: ImageMetadata
    parent: Any
    path: str
    writable: bool
    warnings: list[str]

    def chain(self) -> Iterator[ImageBase]:
        """This image, then its parent, grandparent, ... (the top first)."""
        image: ImageBase | None = self
        while image is not None:
            yield image
            image = image.parent if isinstance(image.parent, ImageBase) else None

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

    def close_chain(self) -> None:
        """Close this image and every parent it opened."""
        for image in list(self.chain()):
            image.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_chain()

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"<{type(self).__name__} {self.path!r} {self.meta.type_name} {self.meta.virtual_size} {mode}>"
