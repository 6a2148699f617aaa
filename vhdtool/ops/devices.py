"""Opening the source of an operation: any VHD (its chain resolved) or a raw disk image."""

from __future__ import annotations

import os

from vhdtool.errors import NotVhdError, UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice, RawFile
from vhdtool.format.chain import open_image
from vhdtool.format.image import ImageBase

FORMATS = ("vhd", "raw")


# Other image formats, recognised so that they are refused instead of being read as raw disks
# (qemu-img probes the same way): (offset, magic, name).
FOREIGN_MAGIC = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0x40, b"\x7f\x10\xda\xbe", "VDI"),
    (0, b"QED\x00", "QED"),
)
VHD_SUFFIXES = (".vhd", ".avhd")


def open_device(path: str | os.PathLike[str], fmt: str | None = None) -> BlockDevice:
    """``fmt`` 'vhd' or 'raw'; None probes: a file with a VHD footer is a VHD; a file without one
    is a raw disk unless it is empty, another image format, or named like a VHD (``.vhd``,
    ``.avhd``: then it is a damaged VHD, and reading it as raw would hide that).

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
        if fmt == "vhd" or path.lower().endswith(VHD_SUFFIXES):
            raise
    raw = RawFile(path)
    try:
        _refuse_non_raw(raw)
    except BaseException:
        raw.close()
        raise
    return raw


def _refuse_non_raw(raw: RawFile) -> None:
    if raw.size == 0:
        raise VhdError(f"{raw.path}: empty file: neither a VHD nor a raw disk")
    head = os.pread(raw.fileno(), 0x44, 0)
    for offset, magic, name in FOREIGN_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            raise VhdError(f"{raw.path}: is a {name} image; vhdtool reads VHD and raw disks (qemu-img converts it)")


def close_device(dev: BlockDevice) -> None:
    if isinstance(dev, ImageBase):
        dev.close_chain()
    else:
        dev.close()


def kind_of(dev: BlockDevice) -> str:
    """'raw', or the VHD type of the top image ('fixed', 'dynamic', 'differencing')."""
    return dev.meta.type_name if isinstance(dev, ImageBase) else "raw"
