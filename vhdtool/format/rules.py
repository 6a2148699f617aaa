"""Pure rules of the format: CHS geometry, which size a reader believes, timestamps, sizes.

Table-driven and free of I/O, so each rule is tested on its own (see tests/format/test_rules.py).
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

from vhdtool.errors import UsageError

SECTOR = 512
"""The sector of a VHD and of the virtual disk it holds: the unit of BAT entries, bitmaps and partition tables."""
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

MAX_CHS_SECTORS = 65535 * 16 * 255
"""The largest size CHS can describe; qemu reads Current Size when the geometry is this maximum."""
MAX_DYNAMIC_SIZE = 2040 * GiB
"""Largest dynamic/differencing disk (qemu's limit, 0xff000000 sectors)."""
MAX_FIXED_SIZE = 2040 * GiB
DEFAULT_SIZE = 127 * GiB
DEFAULT_BLOCK_SIZE = 2 * MiB
MIN_BLOCK_SIZE = 512 * KiB
"""The smallest block size vhdtool creates (readers accept any power of two from 512 bytes)."""
MAX_BLOCK_SIZE = 256 * MiB

VHD_EPOCH = 946684800
"""2000-01-01 00:00:00 UTC as a Unix time: VHD timestamps count seconds from here."""


class Creator(NamedTuple):
    """The footer's creator fields: application, version (major << 16 | minor), host OS."""

    application: bytes
    version: int
    host_os: bytes


VHDTOOL_CREATOR = Creator(b"vhdt", 0x00010000, b"Wi2k")
"""What vhdtool writes: its own application code, version 1.0, and the host OS Windows readers expect."""
HYPER_V_CREATOR = Creator(b"win ", 0x000A0000, b"Wi2k")
"""What Hyper-V's New-VHD writes on Windows 10 and Server 2016 or later."""

CREATOR_NAMES = {
    b"vpc ": "Microsoft Virtual PC",
    b"vs  ": "Microsoft Virtual Server",
    b"win ": "Microsoft Windows / Hyper-V",
    b"d2v ": "Sysinternals Disk2vhd",
    b"qemu": "QEMU",
    b"qem2": "QEMU (force_size)",
    b"tap\0": "Xen blktap",
    b"CTXS": "Citrix XenConverter",
    b"wa\0\0": "Microsoft Azure",
    b"vbox": "Oracle VirtualBox",
    b"vhdt": "vhdtool",
}

# Readers that trust CHS rather than Current Size, as Debian's qemu 7.2 decides (block/vpc.c):
# everything but these creators uses CHS unless the geometry is the maximum.
QEMU72_CURRENT_SIZE_CREATORS = frozenset({b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"})


class Geometry(NamedTuple):
    cylinders: int
    heads: int
    sectors_per_track: int

    @property
    def sectors(self) -> int:
        return self.cylinders * self.heads * self.sectors_per_track

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def is_maximum(self) -> bool:
        return (self.cylinders, self.heads, self.sectors_per_track) == (65535, 16, 255)


def chs_geometry(size: int) -> Geometry:
    """CHS geometry for a disk of ``size`` bytes, by the specification's algorithm (rounds down)."""
    total = min(size // SECTOR, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return Geometry(cth // heads, heads, spt)


def geometry_for_creator(size: int, creator: Creator) -> Geometry:
    """The spec's CHS for a creator every reader takes the size fields of (Windows writes it, and
    qemu 7.2 reads Current Size for it), else ``geometry_for_new_image``."""
    if creator.application in QEMU72_CURRENT_SIZE_CREATORS:
        return chs_geometry(size)
    return geometry_for_new_image(size)


def geometry_for_new_image(size: int) -> Geometry:
    """The geometry vhdtool writes: the spec's CHS when it describes ``size`` exactly, else the maximum.

    Readers disagree about which size to believe (docs/VHD-FORMAT.md): Hyper-V, VirtualBox, blktap
    and libvhdi read the size fields, Debian's qemu 7.2 reads CHS for unknown creators unless the
    geometry is the maximum 65535/16/255. Writing the maximum whenever CHS would round the size
    down makes every one of them agree on Current Size (qemu's own force_size does the same).
    """
    geometry = chs_geometry(size)
    if geometry.size == size:
        return geometry
    return Geometry(65535, 16, 255)


def qemu72_virtual_size(creator: bytes, geometry: Geometry, current_size: int) -> int:
    """The size Debian's qemu-img 7.2 reports for a footer: used to warn when peers disagree."""
    if creator in QEMU72_CURRENT_SIZE_CREATORS or geometry.is_maximum:
        return current_size
    return geometry.size


def to_vhd_timestamp(unix_time: float | None = None) -> int:
    """Seconds since 2000-01-01 UTC, clamped to the field's range."""
    t = time.time() if unix_time is None else unix_time
    return max(0, min(int(t) - VHD_EPOCH, 0xFFFFFFFF))


def from_vhd_timestamp(value: int) -> int:
    """Unix time of a VHD timestamp."""
    return value + VHD_EPOCH


_SIZE_PATTERN = r"^\s*([+-]?)(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$"
"""Compiled on first use (re caches it): most commands parse no size, and rules loads with every one."""
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB, "p": 1 << 50, "e": 1 << 60}


def parse_size(text: str) -> tuple[str, int]:
    """Parse ``127G``, ``512M``, ``+1G``, ``1048576``: binary units. Returns (sign, bytes).

    The sign is '' for an absolute size, '+' or '-' for a relative one.
    """
    m = re.match(_SIZE_PATTERN, str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"not a size: {text!r} (use bytes or a suffix: 512M, 127G, 2T)")
    sign, number, unit, _ = m.groups()
    value = float(number) * _UNITS[unit.lower()]
    if value != int(value):
        raise UsageError(f"size {text!r} is not a whole number of bytes")
    return sign, int(value)


def parse_absolute_size(text: str, what: str = "size") -> int:
    """A size with no sign: ``+1G``/``-1G`` are relative sizes, which only resize takes."""
    sign, value = parse_size(text)
    if sign:
        raise UsageError(f"{what} {text!r} has a sign; give an absolute size (only resize takes +N/-N)")
    return value


def validate_virtual_size(size: int, disk_type: str) -> None:
    """Refuse sizes no VHD can have; the message names the value and the rule."""
    if size <= 0:
        raise UsageError(f"size {size} must be positive")
    if size % SECTOR:
        raise UsageError(f"size {size} is not a multiple of 512 bytes")
    limit = MAX_FIXED_SIZE if disk_type == "fixed" else MAX_DYNAMIC_SIZE
    if size > limit:
        raise UsageError(f"size {size} exceeds the {disk_type} VHD limit of {limit} bytes (2040 GiB)")


def validate_block_size(block_size: int) -> None:
    if block_size <= 0 or block_size & (block_size - 1):
        raise UsageError(f"block size {block_size} is not a power of two")
    if block_size < MIN_BLOCK_SIZE:
        raise UsageError(f"block size {block_size} is below the minimum of {MIN_BLOCK_SIZE} (512 KiB)")
    if block_size > MAX_BLOCK_SIZE:
        raise UsageError(f"block size {block_size} is above the maximum of 256 MiB")


def bitmap_bytes(block_size: int) -> int:
    """Size of a block's sector bitmap: one bit a sector, padded to a whole sector."""
    sectors = block_size // SECTOR
    return (((sectors + 7) // 8) + SECTOR - 1) // SECTOR * SECTOR


def human_size(n: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} bytes"
