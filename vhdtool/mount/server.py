"""The mount server: one process per mount, serving the raw view and watching the filesystem.

Layout: the main thread supervises, a second thread runs libfuse's loop for the raw view (at the
mountpoint with --raw, else in a private folder), and a filesystem mount (kernel loop device or
a FUSE program) reads the raw-view file of its partition. Running libfuse off the main thread
keeps its signal handlers out: libfuse only takes signals left at their default, and here
SIGTERM/SIGINT/SIGHUP belong to the supervisor, which then stops in order: unmount the
filesystem (which writes its last changes through the raw view), wait for the loop device or
the FUSE program to let go, unmount the raw view, flush and close the image.

The server also stops by itself when its filesystem or raw view is unmounted by anyone (the
mount table is watched with poll(POLLPRI) on /proc/self/mountinfo, a FUSE program by its pidfd).
``vhdtool umount`` relies on that: it unmounts what the user sees and waits for the server.

Run as ``python -m vhdtool.mount.server STATUS_FD SPEC_JSON`` by ``control.spawn``: one JSON line
on STATUS_FD says the mount is usable (or why it failed), then the fd is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from vhdtool.errors import VhdError
from vhdtool.mount import drivers, registry, system
from vhdtool.mount.registry import MountRecord
from vhdtool.mount.spec import UNDO, MountSpec
from vhdtool.mount.undo import Target

if TYPE_CHECKING:
    from vhdtool.mount.fuseview import RawView

FUSE_START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("vhdtool.mount")


class Server:
    """Serve one ``MountSpec`` until unmounted or signalled."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.raw_dir = spec.mountpoint if spec.raw else str(registry.private_dir(spec.mountpoint))
        self.record: MountRecord | None = None
        self.target: Target | None = None
        self.attached: drivers.Attached | None = None
        self._fuse_thread: threading.Thread | None = None
        self._fuse_error: BaseException | None = None
        self._inited = threading.Event()
        self._signal: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._done_r, self._done_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._record_lock = threading.Lock()

    def run(self, on_ready: Callable[[MountRecord], None]) -> str:
        """Mount, call ``on_ready``, serve; returns why it stopped. Raises VhdError when the
        mount cannot be made (after undoing every step, the undo disk included)."""
        self._take_signals()
        try:
            self._start()
        except BaseException:
            self._stop(failed=True)
            raise
        assert self.record is not None
        on_ready(self.record)
        reason = self._supervise()
        log.info("stopping: %s", reason)
        self._stop(failed=False)
        return reason

    # -- starting ----------------------------------------------------------------------------

    def _take_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def _start(self) -> None:
        spec = self.spec
        pid = os.getpid()
        record = MountRecord(
            mountpoint=spec.mountpoint,
            image=spec.image,
            mode=spec.mode,
            undo=spec.undo,
            raw=spec.raw,
            raw_dir=self.raw_dir,
            log=str(registry.log_path(spec.mountpoint)),
            server_pid=pid,
            server_start=registry.start_time(pid) or 0,
            partition=spec.partition,
            fs=spec.fs,
            driver=None if spec.raw else spec.route.name,
        )
        registry.claim(record)
        self.record = record
        self.target = Target(spec)
        self._start_fuse()
        if not spec.raw:
            assert spec.source is not None
            source = os.path.join(self.raw_dir, spec.source)
            self.attached = drivers.attach(source, spec.mountpoint, spec.route, spec.read_only)
            record.loop = self.attached.loop
            if self.attached.helper is not None:
                record.helper_pid = self.attached.helper.pid
                record.helper_start = registry.start_time(self.attached.helper.pid)
        record.state = registry.MOUNTED
        registry.save(record)
        log.info("mounted %s at %s (%s)", spec.image, spec.mountpoint, record.driver or "raw view")

    def _start_fuse(self) -> None:
        from vhdtool.mount.fuseview import RawView  # loads libfuse: only here
        from vhdtool.mount.rawtree import RawTree

        assert self.target is not None
        if not self.spec.raw:
            os.makedirs(self.raw_dir, exist_ok=True)
        # direct I/O where the reader makes large requests (users of --raw, the kernel's loop device);
        # the page cache where a FUSE program makes tiny ones
        direct = self.spec.raw or self.spec.route_kind == "kernel"
        view = RawView(RawTree(self.target.device), self.spec.read_only, direct, os.stat(self.spec.image),
                       self._inited.set, self._write_failed)
        self._fuse_thread = threading.Thread(target=self._fuse_main, args=(view,), name="fuse", daemon=True)
        self._fuse_thread.start()
        if not system.wait_until(lambda: self._inited.is_set() or not self._fuse_alive(), FUSE_START_TIMEOUT):
            raise VhdError(f"{self.raw_dir}: FUSE did not start within {FUSE_START_TIMEOUT:.0f} s")
        if not self._inited.is_set():
            log.error("FUSE loop ended before it started: %r", self._fuse_error)
            raise VhdError(f"{self.raw_dir}: libfuse refused the mount{self._log_hint()}")
        if not direct:
            self._raise_readahead()

    def _raise_readahead(self) -> None:
        """Let the kernel read ahead 1 MiB at a time (not 128 KiB) on the cached view: a FUSE
        program reading a large file then gets requests of the size the view serves best."""
        dev = os.stat(self.raw_dir).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        with contextlib.suppress(OSError):  # only root may; it is only a speed-up
            knob.write_text("1024")

    def _write_failed(self, message: str) -> None:
        """FUSE thread: count a failed write in the record, which ``umount --commit`` reads; the
        first failure is saved at once (a server killed later still leaves it on record), the
        count when the server stops."""
        record = self.record
        assert record is not None
        with self._record_lock:
            record.failed_writes += 1
            if record.failed_writes == 1:
                record.write_error = message
                registry.update(record.mountpoint, failed_writes=1, write_error=message)

    def _fuse_main(self, view: RawView) -> None:
        from vhdtool.mount.fuseview import serve

        try:
            serve(view, self.raw_dir)
        except BaseException as e:
            self._fuse_error = e
        finally:
            os.write(self._done_w, b"x")

    def _fuse_alive(self) -> bool:
        return self._fuse_thread is not None and self._fuse_thread.is_alive()

    def _log_hint(self) -> str:
        """The last line libfuse wrote to our log (daemon mode), which says what it disliked."""
        path = registry.log_path(self.spec.mountpoint)
        with contextlib.suppress(OSError):
            if os.path.samefile(path, f"/proc/self/fd/{sys.stderr.fileno()}"):
                lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
                if lines:
                    return f" ({lines[-1].strip()})"
        return ""

    # -- serving -----------------------------------------------------------------------------

    def _supervise(self) -> str:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._done_r, select.POLLIN)
        mountinfo = os.open(system.MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        poller.register(mountinfo, select.POLLPRI)
        pidfd = None
        helper = self.attached.helper if self.attached is not None else None
        if helper is not None:
            pidfd = os.pidfd_open(helper.pid)
            poller.register(pidfd, select.POLLIN)
        try:
            while True:
                if self._signal is not None:
                    return f"signal {signal.Signals(self._signal).name}"
                if not self._fuse_alive():
                    return "the raw view was unmounted"
                if self.attached is not None and self.attached.gone():
                    return "the filesystem was unmounted"
                for fd, _ in poller.poll(5000):  # the timeout is only a safety net
                    if fd in (self._wake_r, self._done_r):
                        with contextlib.suppress(BlockingIOError):
                            os.read(fd, 512)
                    elif fd == mountinfo:
                        os.lseek(mountinfo, 0, os.SEEK_SET)  # reading it again re-arms POLLPRI
                        while os.read(mountinfo, 1 << 16):
                            pass
        finally:
            os.close(mountinfo)
            if pidfd is not None:
                os.close(pidfd)

    # -- stopping ----------------------------------------------------------------------------

    def _stop(self, failed: bool) -> None:
        """Undo whatever was set up, in reverse order; every step runs even if one fails."""
        errors: list[str] = []
        if self.attached is not None:
            self._step(errors, self._detach_filesystem)
        if self._fuse_thread is not None:
            self._step(errors, self._stop_fuse)
        if self.target is not None:
            before = len(errors)
            self._step(errors, lambda: self.target.close(drop_undo=failed))  # type: ignore[union-attr]
            if len(errors) > before and self.record is not None:  # the last flush of the writes failed
                self._write_failed(errors[-1])
        if not self.spec.raw:
            with contextlib.suppress(OSError):
                os.rmdir(self.raw_dir)
        if self.record is not None:
            if failed or self.spec.mode != UNDO:
                registry.remove(self.spec.mountpoint)
            else:  # the undo disk waits for 'vhdtool umount --commit|--discard'
                self.record.state = registry.STOPPED
                self.record.loop = self.record.helper_pid = self.record.helper_start = None
                registry.update(
                    self.record.mountpoint,
                    state=registry.STOPPED,
                    loop=None,
                    helper_pid=None,
                    helper_start=None,
                    failed_writes=self.record.failed_writes,
                    write_error=self.record.write_error,
                )
        for e in errors:
            log.error("while stopping: %s", e)

    @staticmethod
    def _step(errors: list[str], step: Callable[[], None]) -> None:
        try:
            step()
        except (VhdError, OSError) as e:
            errors.append(str(e))

    def _detach_filesystem(self) -> None:
        assert self.attached is not None
        try:
            self.attached.detach()
        except system.BusyError:
            # a signal asked us to stop while something still uses the filesystem: write out what
            # it holds, then detach it lazily (it goes when its last user leaves)
            log.warning("%s is busy: syncing and detaching it lazily", self.spec.mountpoint)
            os.sync()
            self.attached.detach(lazy=True)

    def _stop_fuse(self) -> None:
        assert self._fuse_thread is not None
        if self._fuse_thread.is_alive():
            mounted = system.mounted_at(self.raw_dir)
            if mounted is not None and mounted.fstype == "fuse.vhdtool":
                try:
                    system.unmount(self.raw_dir)
                except system.BusyError:
                    if self.target is not None:
                        self.target.device.flush()
                    system.unmount(self.raw_dir, lazy=True)
                    system.abort_fuse(mounted)
        self._fuse_thread.join(STOP_TIMEOUT)
        if self._fuse_thread.is_alive():
            raise VhdError(f"{self.raw_dir}: the FUSE loop did not end")


# -- the daemon's entry point --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    status_fd, spec = int(argv[0]), MountSpec(**json.loads(argv[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def report(doc: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            os.write(status_fd, (json.dumps(doc) + "\n").encode())
            os.close(status_fd)

    try:
        Server(spec).run(lambda record: report({"record": asdict(record)}))
    except VhdError as e:
        log.error("%s", e)
        report({"error": str(e), "exit_code": e.exit_code})
        return e.exit_code
    except Exception as e:
        log.exception("mount server failed")
        report({"error": f"the mount server failed: {e!r}", "exit_code": 1})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
