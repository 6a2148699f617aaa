"""Starting and ending mounts from the command line or Python: the client side of the server.

``spawn`` starts the server as a daemon (its own session, cwd /, stdin from /dev/null, output to
its log in the runtime folder) and waits on a pipe until the mount is usable or has failed; a
failure comes back as the server's one-line error. ``unmount`` unmounts what the user sees and
waits for the server to notice, flush and exit; then it commits or discards the undo disk. A
server that was killed leaves a stale mount: ``unmount`` detaches its dead mounts lazily and goes
on as if it had stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from vhdtool.errors import UsageError, VhdError
from vhdtool.mount import registry, system, undo
from vhdtool.mount.registry import MountRecord
from vhdtool.mount.spec import DIRECT, UNDO, MountSpec
from vhdtool.ops.datapath import ProgressCallback

SERVER_EXIT_TIMEOUT = 120.0
COMMIT = "commit"
DISCARD = "discard"


def spawn(spec: MountSpec) -> tuple[MountRecord, subprocess.Popen[bytes]]:
    """Start a daemon serving ``spec``; returns once the mount is usable."""
    log = registry.log_path(spec.mountpoint)
    status_r, status_w = os.pipe()
    env = dict(os.environ)
    # the daemon imports this very vhdtool, wherever it was imported from (this file is
    # vhdtool/mount/control.py: the folder holding the package is three levels up)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vhdtool.mount.server", str(status_w), json.dumps(asdict(spec))],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(status_w,),
                start_new_session=True,
                cwd="/",
                env=env,
            )
    finally:
        os.close(status_w)
    with os.fdopen(status_r, "rb") as status:
        line = status.readline()
    try:
        doc = json.loads(line)
    except ValueError:
        proc.wait()
        raise VhdError(f"the mount server exited (status {proc.returncode}) before mounting; see {log}") from None
    if "error" in doc:
        proc.wait()
        error = VhdError(doc["error"])
        error.exit_code = int(doc.get("exit_code", 1))
        raise error
    return MountRecord(**doc["record"]), proc


def serve_foreground(spec: MountSpec, on_ready: Callable[[MountRecord], None]) -> str:
    """Serve ``spec`` in this process until unmounted or signalled (``mount --foreground``)."""
    import logging

    from vhdtool.mount.server import Server

    logging.basicConfig(level=logging.WARNING, format="vhdtool: %(levelname)s: %(message)s")
    return Server(spec).run(on_ready)


@dataclass(frozen=True, slots=True)
class Unmounted:
    record: MountRecord
    action: str | None
    """``commit``, ``discard`` or None (no undo disk)."""
    committed: int
    """Bytes the commit wrote into the image."""
    was_stale: bool
    earlier: bool = False
    """The mount had already ended this way (an umount repeated after its first run was killed)."""


def unmount(
    mountpoint: str,
    action: str | None = None,
    *,
    ask: Callable[[MountRecord], str | None] | None = None,
    progress: ProgressCallback | None = None,
) -> Unmounted:
    """End a vhdtool mount; with an undo disk, ``action`` (or ``ask``) says commit or discard.

    Nothing changes when the mount is busy, or when an undo disk is pending and no decision was
    given (the server keeps running, the undo disk stays).
    """
    mountpoint = os.path.abspath(mountpoint)
    record = registry.load(mountpoint)
    if record is None:
        ended = registry.last_end(mountpoint)
        if ended is not None and action == ended.action:
            return Unmounted(ended.record, ended.action, ended.committed, False, earlier=True)
        if ended is not None and action is not None:
            done = "committed into" if ended.action == COMMIT else "discarded; unchanged:"
            raise VhdError(f"{mountpoint}: no longer mounted: its undo disk was already {done} {ended.record.image}")
        raise UsageError(f"{mountpoint}: not mounted by vhdtool (see 'vhdtool mount --list')")
    action = _decide(record, action, ask)
    state = registry.status(record)
    was_stale = state == registry.STALE
    if state in (registry.MOUNTED, registry.STARTING):
        _stop_server(record)
    elif was_stale:
        clean_stale(record)
    committed = 0
    if record.mode == UNDO and record.undo is not None:
        record = registry.load(mountpoint) or record  # the stopped server's last word: failed writes
        if action == COMMIT:
            _refuse_torn(record)
            committed = undo.commit(record.undo, record.image, progress)
        else:
            _refuse_discard_after_commit(record)
            undo.discard(record.undo)
        registry.remember_end(record, action, committed)
    registry.remove(mountpoint)
    with contextlib.suppress(OSError):
        os.unlink(record.log)
    return Unmounted(record, action if record.mode == UNDO else None, committed, was_stale)


def _refuse_torn(record: MountRecord) -> None:
    """Never commit, as if clean, a filesystem whose writes failed during the mount."""
    if record.failed_writes:
        raise VhdError(
            f"{record.mountpoint}: {record.failed_writes} write(s) into the undo disk {record.undo} failed during "
            f"the mount (first: {record.write_error}); the filesystem in it may be torn, so nothing was committed "
            f"and {record.image} is unchanged; the undo disk is kept: discard it with --discard, or merge it "
            f"anyway with 'vhdtool merge {record.undo} --into {record.image}'"
        )


def _refuse_discard_after_commit(record: MountRecord) -> None:
    assert record.undo is not None
    if undo.commit_started(record.undo):
        raise VhdError(
            f"{record.mountpoint}: a commit of the undo disk {record.undo} into {record.image} started and was "
            f"interrupted, so {record.image} holds part of it; discarding now would leave it torn. Run "
            f"'vhdtool umount {record.mountpoint} --commit' to finish the commit (the undo disk is kept)"
        )


def _decide(record: MountRecord, action: str | None, ask: Callable[[MountRecord], str | None] | None) -> str | None:
    if action not in (None, COMMIT, DISCARD):
        raise UsageError(f"unknown action {action!r} (commit or discard)")
    if record.mode == DIRECT and action == DISCARD:
        raise UsageError(
            f"{record.mountpoint}: mounted with --no-undo: its writes are in {record.image} already and cannot "
            "be discarded (nothing changed)"
        )
    if record.mode != UNDO or action is not None:
        return action
    decided = ask(record) if ask is not None else None
    if decided is None:
        raise UsageError(
            f"{record.mountpoint}: the changes are in the undo disk {record.undo}; say --commit or --discard "
            "(nothing changed)"
        )
    return decided


def _stop_server(record: MountRecord) -> None:
    """Unmount what the user sees (BusyError leaves everything as it was) and wait for the server."""
    top = system.mounted_at(record.mountpoint)
    if top is not None:
        if not _ours(record, top):
            raise UsageError(f"{record.mountpoint}: a {top.fstype} mount sits on top of vhdtool's; unmount it first")
        system.unmount(record.mountpoint)
    if not _wait_exit(record.server_pid, SERVER_EXIT_TIMEOUT):
        raise VhdError(
            f"{record.mountpoint}: the mount server (pid {record.server_pid}) did not stop within "
            f"{SERVER_EXIT_TIMEOUT:.0f} s; see {record.log}"
        )
    after = registry.load(record.mountpoint)
    if after is not None and after.state != registry.STOPPED:
        clean_stale(after)  # it died on the way out


def _ours(record: MountRecord, m: system.Mounted) -> bool:
    """Whether the mount on top of the mountpoint is the one this record made."""
    if record.raw:
        return m.fstype == "fuse.vhdtool"
    if record.loop is not None:
        return m.source == record.loop
    return system.is_fuse(m)


def _wait_exit(pid: int, timeout: float) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(pidfd)


def clean_stale(record: MountRecord) -> None:
    """Take down what a dead server left: its filesystem mount, FUSE program and raw view."""
    top = system.mounted_at(record.mountpoint)
    if top is not None and _ours(record, top):
        system.unmount(record.mountpoint, lazy=True)
    if registry.alive(record.helper_pid, record.helper_start):
        assert record.helper_pid is not None
        if not _wait_exit(record.helper_pid, 10.0):  # it ends by itself once unmounted
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.helper_pid, signal.SIGKILL)
    if not record.raw:
        raw = system.mounted_at(record.raw_dir)
        if raw is not None and raw.fstype == "fuse.vhdtool":
            system.unmount(record.raw_dir, lazy=True)
        with contextlib.suppress(OSError):
            os.rmdir(record.raw_dir)
    if record.mode == UNDO:
        record.state = registry.STOPPED
        registry.save(record)
    else:
        registry.remove(record.mountpoint)


def wait_gone(proc: subprocess.Popen[bytes], timeout: float = SERVER_EXIT_TIMEOUT) -> None:
    """Reap a server started by ``spawn`` after it was unmounted."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def describe(record: MountRecord) -> str:
    """One line: what is mounted where, how, and where writes go."""
    if record.raw:
        what = f"the raw view of {record.image} (disk, and a p<N> file per partition)"
    else:
        what = f"{record.image} partition {record.partition} ({record.fs}, {record.driver} driver)"
    writes = {
        UNDO: f"changes go to the undo disk {record.undo}",
        DIRECT: "changes go straight into the image",
    }.get(record.mode, "read-only")
    return f"mounted {what} at {record.mountpoint}; {writes}"

