"""Temporary files and folders named after the process that owns them, and removing those whose
owner is dead.

A command killed with SIGKILL (or by a power cut) cannot clean up after itself; its temporary
files (convert's ``.DEST.vhdtool-PID.tmp``, build's ``.OUT.vhdtool-PID.xxxx/``, the file
commands' ``vhdtool-volume-PID-xxxx.raw``) carry the owner's process id, so the next run that
writes to the same place removes them once no process with that id exists. A reused id only
keeps a leftover a little longer; a live owner's files are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def tag() -> str:
    """The owner mark to put in a temporary name: ``vhdtool-PID``."""
    return f"vhdtool-{os.getpid()}"


def sweep(folder: str, pattern: str) -> list[str]:
    """Remove the entries of ``folder`` whose whole name matches ``pattern`` (a regular
    expression with a group named ``pid``) and whose owner is dead; returns what was removed."""
    rule = re.compile(pattern)
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = rule.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil  # a leftover folder is rare: a plain create or convert never loads it

                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
    return removed


def sweep_beside(path: str) -> list[str]:
    """Remove the dead owners' temporary files and folders made for ``path`` (``.NAME.vhdtool-PID...``)."""
    folder = os.path.dirname(os.path.abspath(path))
    return sweep(folder, re.escape(f".{os.path.basename(path)}.") + r"vhdtool-(?P<pid>\d+)(\..*)?")


def temp_beside(path: str) -> str:
    """A temporary name beside ``path`` for this process (``.NAME.vhdtool-PID.tmp``), after removing
    the dead owners' leftovers made for ``path``."""
    sweep_beside(path)
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.{tag()}.tmp")
