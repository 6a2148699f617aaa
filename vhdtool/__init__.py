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

from importlib import import_module
from typing import TYPE_CHECKING, Any

# The subpackage vhdtool.mount shares its name with the function vhdtool.mount. Importing a
# subpackage for the first time binds it as an attribute of this package, so it is imported here,
# once (its __init__ is empty), and its binding dropped: from then on `vhdtool.mount` is looked up
# through __getattr__ below, which loads the function from mount.api on first use.
import_module("vhdtool.mount")
globals().pop("mount", None)

if TYPE_CHECKING:
    from vhdtool.errors import VhdError
    from vhdtool.format.blockdev import BlockDevice, Extent, RawFile
    from vhdtool.format.chain import open_image as open
    from vhdtool.mount.api import mount
    from vhdtool.ops.create import create

__all__ = ["BlockDevice", "Extent", "RawFile", "VhdError", "create", "mount", "open"]
__version__ = "0.1.0"

# The API names are imported on first use: the vhdtool command imports this package before
# every subcommand, and most of them need only a few of these modules (each costs milliseconds
# of start-up: construct, the FUSE binding, dataclasses).
_API = {
    "BlockDevice": ("vhdtool.format.blockdev", "BlockDevice"),
    "Extent": ("vhdtool.format.blockdev", "Extent"),
    "RawFile": ("vhdtool.format.blockdev", "RawFile"),
    "VhdError": ("vhdtool.errors", "VhdError"),
    "open": ("vhdtool.format.chain", "open_image"),
    "create": ("vhdtool.ops.create", "create"),
    "mount": ("vhdtool.mount.api", "mount"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'vhdtool' has no attribute {name!r}") from None
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
