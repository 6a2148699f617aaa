"""Filesystem drivers: adapters over each filesystem's own tools, chosen by detected type."""

from __future__ import annotations

from vhdtool.disk.fs.base import FsDriver
from vhdtool.disk.fs.ext import ExtDriver
from vhdtool.disk.fs.fat import FatDriver
from vhdtool.disk.fs.ntfs import NtfsDriver
from vhdtool.errors import UsageError

_DRIVERS: tuple[FsDriver, ...] = (ExtDriver(), FatDriver(), NtfsDriver())


def driver_for(fs_type: str) -> FsDriver:
    """The driver for a filesystem type as detect() names it (ext2/3/4, vfat, ntfs)."""
    for d in _DRIVERS:
        if fs_type in d.types:
            return d
    raise UsageError(f"no support for {fs_type} filesystems")
