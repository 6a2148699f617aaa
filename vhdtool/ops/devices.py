"""Opening the source of an operation: any VHD (its chain resolved) or a raw disk image."""

from __future__ import annotations

import os

from vhdtool.errors import NotVhdError, UsageError
from vhdtool.format.blockdev import BlockDevice, RawFile
from vhdtool.format.chain import open_image
from vhdtool.format.image import ImageBase

FORMATS = ("vhd", "raw")


def open_device(path: str | os.PathLike[str], fmt: str | None = None) -> BlockDevice:
    """``fmt`` 'vhd' or 'raw'; None probes: a file with a VHD footer is a VHD, anything else raw.

    Close the result with ``close_device``.
    """
    path = os.fspath(path)
    if fmt not in (None, *FORMATS):
        raise UsageError(f"unknown format {fmt!r} (choose vhd or raw)")
    if fmt == "raw":
        return RawFile(path)
    try:
        return open_image(path)
    except NotVhdError:
        if fmt == "vhd":
            raise
        return RawFile(path)


def close_device(dev: BlockDevice) -> None:
    if isinstance(dev, ImageBase):
        dev.close_chain()
    else:
        dev.close()


def kind_of(dev: BlockDevice) -> str:
    """'raw', or the VHD type of the top image ('fixed', 'dynamic', 'differencing')."""
    return dev.meta.type_name if isinstance(dev, ImageBase) else "raw"
