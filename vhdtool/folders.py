"""Where vhdtool keeps what outlives one command: the one module that says so.

- **state** (``state_dir``): the guests ``vhdtool run`` runs — per guest an entry file, a lock
  held for the runner's life and a folder of sockets. ``$VHDTOOL_STATE_DIR``, else
  ``$XDG_RUNTIME_DIR/vhdtool`` when that folder exists, else ``~/.cache/vhdtool/run``.
- **runtime** (``runtime_dir``): the mount registry and its logs. ``$VHDTOOL_RUNTIME_DIR``, else
  ``/run/vhdtool`` for root, else ``$XDG_RUNTIME_DIR/vhdtool``, else ``/tmp/vhdtool-UID``.
- **snapshots** (``snapshot_dir``): the snapshot catalogue, which outlives the guests that made
  it. ``$VHDTOOL_SNAPSHOT_DIR``, else ``$VHDTOOL_STATE_DIR/snapshots``, else
  ``$XDG_DATA_HOME/vhdtool/snapshots`` (``~/.local/share/...``).

Nothing here creates a folder: each user makes its own, with the mode it needs. Each keeps its
records as ``NAME.json`` files; ``record_names`` lists them.
"""

from __future__ import annotations

import os
import tempfile


def state_dir() -> str:
    explicit = os.environ.get("VHDTOOL_STATE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "vhdtool")
    return os.path.join(os.path.expanduser("~"), ".cache", "vhdtool", "run")


def runtime_dir() -> str:
    explicit = os.environ.get("VHDTOOL_RUNTIME_DIR")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/run/vhdtool"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "vhdtool")
    return os.path.join(tempfile.gettempdir(), f"vhdtool-{os.getuid()}")


def record_names(folder: str) -> list[str]:
    """The NAMEs of the ``NAME.json`` records in ``folder``, sorted; none when it does not exist."""
    try:
        return sorted(n[: -len(".json")] for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def snapshot_dir() -> str:
    explicit = os.environ.get("VHDTOOL_SNAPSHOT_DIR")
    if explicit:
        return explicit
    state = os.environ.get("VHDTOOL_STATE_DIR")
    if state:
        return os.path.join(state, "snapshots")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "vhdtool", "snapshots")
