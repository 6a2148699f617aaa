"""Loading mfusepy against libfuse3, and checking beforehand that FUSE can work here.

mfusepy looks for libfuse2 first; libfuse3 is what gives 1 MiB requests (libfuse2 caps them at
128 KiB), so it is asked for by name unless the user points FUSE_LIBRARY_PATH elsewhere. Only
the mount server imports it: every other command starts without FUSE.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import threading
from types import ModuleType

from vhdtool.errors import VhdError


class FuseUnavailable(VhdError):
    """FUSE cannot be used on this machine (no /dev/fuse, no libfuse3, no mfusepy)."""


def check() -> None:
    """Refuse early, with the fix in the message, when a FUSE mount could not work."""
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("FUSE is not available: /dev/fuse is missing (load the fuse module: modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise FuseUnavailable("FUSE is not available: no permission to open /dev/fuse")
    if importlib.util.find_spec("mfusepy") is None:
        raise FuseUnavailable("FUSE is not available: mfusepy is not installed (pip install mfusepy)")
    if not os.environ.get("FUSE_LIBRARY_PATH") and ctypes.util.find_library("fuse3") is None:
        raise FuseUnavailable("FUSE is not available: libfuse3 is not installed (apt install libfuse3-3 fuse3)")


def load() -> ModuleType:
    """The mfusepy module, bound to libfuse3."""
    check()
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (ImportError, OSError, AttributeError) as e:
        raise FuseUnavailable(f"FUSE is not available: mfusepy cannot load libfuse: {e}") from None
    return mfusepy


_thread = threading.local()


def keep_thread_state() -> None:
    """Keep the calling libfuse worker thread's Python thread state from one callback to the next.

    ctypes runs a callback on a thread Python did not start inside PyGILState_Ensure/Release,
    which make a thread state for the call and delete it after (with its 16 KiB frame stack,
    mmap'ed and munmap'ed each time, a cost perf shows on every read). One
    Ensure never released keeps it for the thread's life; libfuse's workers live as long as
    the mount (max_idle_threads = max_threads), and the process ends with them.
    """
    if not getattr(_thread, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _thread.kept = True
