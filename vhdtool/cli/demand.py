"""Deferred imports of a few standard modules that libraries import at start-up but rarely use.

construct imports pdb (for its Debugger), hashlib (for compiled parsers' cache names), pickle
(for its Pickled field) and traceback at module level; shutil imports bz2 and lzma to learn
whether archives can be compressed. vhdtool's commands use none of them on their common paths,
yet every run that reads a header would pay for loading them. Like Mercurial's demandimport, the
command's entry point installs a finder that hands out these modules unexecuted: the module's
code runs on the first access to one of its attributes, so a path that uses it gets the real
module, a path that does not never loads it.

Only the command does this (``vhdtool.cli.main``), never ``import vhdtool``: a program using the
library keeps Python's ordinary imports. Loading runs under one lock, so two threads touching a
deferred module at once both see it whole (importlib.util.LazyLoader lacks that before 3.12).
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

DEFERRED = frozenset({"pdb", "hashlib", "pickle", "traceback", "bz2", "lzma"})

# a module that fails to import without its C part is deferred only when that part is there:
# shutil's `try: import lzma` must still see the ImportError of a Python built without it
_NEEDS = {"bz2": "_bz2", "lzma": "_lzma"}

# what the import system itself reads on a module that is imported again: reading these must
# not run the module's code
_KEPT = frozenset({"__spec__", "__name__", "__loader__", "__class__", "__path__", "__package__"})

_lock = threading.RLock()
_loading: set[int] = set()


class DeferredModule(types.ModuleType):
    """A module whose code has not run yet: the first attribute read runs it, then it is a plain module."""

    def __getattribute__(self, name: str) -> Any:
        if name not in _KEPT:
            _load(self)
        return types.ModuleType.__getattribute__(self, name)


def _load(module: types.ModuleType) -> None:
    with _lock:
        # the module's own code reads its __dict__ while it runs: that read must not start it again
        if type(module) is not DeferredModule or id(module) in _loading:
            return
        _loading.add(id(module))
        try:
            spec = types.ModuleType.__getattribute__(module, "__spec__")
            real = spec.loader_state
            spec.loader = module.__loader__ = real  # tracebacks and inspect find the source through it
            real.exec_module(module)
            module.__class__ = types.ModuleType
        finally:
            _loading.discard(id(module))


# plain classes, not importlib.abc's: that module imports importlib.resources, zipfile, bz2 and lzma
class _DeferringLoader:
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default: a plain module object, turned deferred in exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__class__ = DeferredModule


def _find(name: str, path: Sequence[str] | None = None) -> importlib.machinery.ModuleSpec | None:
    return importlib.machinery.PathFinder.find_spec(name, path)


class _DeferringFinder:
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in DEFERRED or (fullname in _NEEDS and _find(_NEEDS[fullname]) is None):
            return None
        spec = _find(fullname, path)
        if spec is None or not hasattr(spec.loader, "exec_module") or spec.submodule_search_locations:
            return None  # not a plain source module: imported as usual
        spec.loader_state = spec.loader
        spec.loader = _DeferringLoader()
        return spec


def install() -> None:
    """Defer the modules in DEFERRED that are not imported yet (calling it again changes nothing)."""
    if not any(isinstance(finder, _DeferringFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferringFinder())
