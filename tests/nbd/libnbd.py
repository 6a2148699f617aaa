"""Debian's python3-libnbd bindings, importable from the project venv.

The package installs into the system Python's dist-packages (same CPython ABI as the venv);
only its two modules are loaded from there, so nothing else of the system site shadows the venv.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

DIST = "/usr/lib/python3/dist-packages"


def _load(name: str, filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, f"{DIST}/{filename}")
    assert spec is not None and spec.loader is not None, f"{DIST}/{filename}: python3-libnbd is not installed"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load() -> ModuleType:
    try:
        import nbd  # type: ignore[import-not-found]

        return nbd
    except ImportError:
        pass
    abi = f"cpython-{sys.version_info.major}{sys.version_info.minor}-x86_64-linux-gnu"
    _load("libnbdmod", f"libnbdmod.{abi}.so")
    return _load("nbd", "nbd.py")


nbd = load()
