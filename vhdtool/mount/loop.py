"""Loop devices set up with one LOOP_CONFIGURE ioctl: autoclear and direct I/O.

Autoclear makes the device go away by itself once the filesystem on it is unmounted, whoever
unmounts it (and after a crash of the mount server). Direct I/O makes the loop driver hand the
backing file whole requests (up to its 1280 KiB limit) instead of one page at a time, which is
what a FUSE file served with 1 MiB requests wants (fewer, larger requests: writes into ext4
over a vhdtool raw view are markedly faster).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from vhdtool.errors import VhdError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16

# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit; u32 number, encrypt_type,
#                      encrypt_key_size, flags; u8 file_name[64], crypt_name[64], key[32]; u64 init[2]; }
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")
assert _LOOP_CONFIG.size == 304


def attach(path: str, read_only: bool) -> tuple[str, int]:
    """A free loop device over the file ``path``: (its /dev path, an open fd on it).

    The caller mounts the device, then closes the fd: from then on the device lives exactly as
    long as the mount (autoclear). Closing the fd without mounting releases it at once.
    """
    flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO | (LO_FLAGS_READ_ONLY if read_only else 0)
    try:
        backing = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    except OSError as e:
        raise VhdError(f"{path}: cannot open for a loop device: {e.strerror}") from None
    try:
        control = os.open("/dev/loop-control", os.O_RDWR)
    except OSError as e:
        os.close(backing)
        raise VhdError(f"/dev/loop-control: {e.strerror} (kernel mounts need loop devices and root)") from None
    try:
        for _ in range(16):  # another process may take the free device between the two calls
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            fd = os.open(device, os.O_RDONLY if read_only else os.O_RDWR)
            name = os.fsencode(path)[:63]
            config = _LOOP_CONFIG.pack(backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0, *[0] * 8)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                return device, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:
                    raise VhdError(f"{device}: cannot attach {path}: {e.strerror}") from None
        raise VhdError("no free loop device (all are taken)")
    finally:
        os.close(control)
        os.close(backing)


def backing_file(device: str) -> str | None:
    """The file a loop device serves, or None once it is detached."""
    try:
        return Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read_text().strip()
    except OSError:
        return None
