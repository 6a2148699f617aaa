"""vhdtool: Microsoft VHD disk images (fixed, dynamic, differencing) on Linux.

Python API::

    import vhdtool
    vhdtool.create("disk.vhd", size="1G")            # dynamic, 2 MiB blocks
    vhdtool.create("child.vhd", parent="disk.vhd")   # differencing
    with vhdtool.open("child.vhd", writable=True) as img:
        img.pwrite(0, b"hello")
        img.flush()
        data = img.pread(0, 512)

Every image implements the BlockDevice protocol (vhdtool.format.blockdev).
"""

from __future__ import annotations

from vhdtool.errors import VhdError
from vhdtool.format.blockdev import BlockDevice, Extent, RawFile
from vhdtool.format.chain import open_image as open
from vhdtool.mount.api import mount
from vhdtool.ops.create import create

__all__ = ["BlockDevice", "Extent", "RawFile", "VhdError", "create", "mount", "open"]
__version__ = "0.1.0"
