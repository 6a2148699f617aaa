"""Fixed VHDs: the virtual disk is the file's first ``size`` bytes; the footer follows."""

from __future__ import annotations

import os

from vhdtool.errors import CorruptImageError, ReadOnlyError
from vhdtool.format.blockdev import WholeFile, check_range, clip_read, pwrite_all
from vhdtool.format.fallocate import punch_hole
from vhdtool.format.image import ImageBase
from vhdtool.format.metadata import ImageMetadata


class FixedImage(ImageBase, WholeFile):
    """A fixed VHD as a BlockDevice: reads and writes go straight to the file."""

    def __init__(self, meta: ImageMetadata, fd: int, writable: bool) -> None:
        super().__init__(meta, fd, writable)
        if meta.footer_offset < self.size:
            raise CorruptImageError(
                f"{self.path}: fixed disk of {self.size} bytes needs a file of at least {self.size + 511} "
                f"bytes, this one has {meta.file_size}"
            )

    def _pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, clip_read(self, offset, length), offset)

    def _pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only")
        check_range(self, offset, len(data))
        pwrite_all(self._fd, offset, data)

    def _flush(self) -> None:
        if self.writable:
            os.fsync(self._fd)

    def _trim(self, offset: int, length: int) -> None:
        """Discard: free the file pages inside the range; they read as zeros afterwards."""
        check_range(self, offset, length)
        punch_hole(self._fd, offset, length)

    def _close(self) -> None:
        self._close_file()
