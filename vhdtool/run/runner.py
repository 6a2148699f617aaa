"""`vhdtool run`: boot images under QEMU with vhdtool serving their disks, until the guest stops.

One asyncio loop in the main thread runs everything the guest needs: the NBD server of its
disks (device I/O in the server's worker threads), the control socket, QEMU as a child process
(its stdio is the serial console), the runner's own QMP connection, and the timers and signals
that end a run. Set-up goes in order — name and state entry claimed, disks opened, NBD and
control sockets listening, QEMU started paused, QMP connected, entry published, ``cont`` — and
is undone in reverse however the run ends (guest stopped, ``--expect`` matched, ``--timeout``,
Ctrl-C/SIGTERM/SIGHUP, an error): QEMU quit (killed if it does not go), sockets closed, NBD
requests answered and images flushed and closed, throw-away layers and the entry removed.
QEMU gets ``PR_SET_PDEATHSIG`` so that even a runner killed with -9 leaves no guest behind.

With ``--incoming ADDRESS`` the guest does not boot: QEMU waits for a migration at ADDRESS and
starts the guest itself once it has arrived, and a second NBD server offers the disks to the
source's mirror beside ADDRESS (see ``address``) until then. A migration that fails before the
guest started here ends QEMU and the run (exit 1). The source's runner, whose QEMU the migration
left stopped and ``vhdtool migrate`` quits, exits 0 saying the guest migrated away.

Exit codes: 0 the guest stopped by itself (powered off or reset), migrated away, or ``--expect``
matched; 1 ``--expect`` not matched before the guest stopped or ``--timeout`` passed, a guest
still running at ``--timeout``, QEMU missing or failing, an incoming migration that failed,
``--accel kvm`` without real KVM; 64 bad input (missing files, an image with no bootloader and no
``--kernel``, a name in use); 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.format.rules import parse_size
from vhdtool.run import address, host, qemu, state
from vhdtool.run.console import ConsoleLog, keys_forwarder, raw_terminal
from vhdtool.run.disks import GuestDisk, close_disks, first_sector, open_disks
from vhdtool.run.qmp import QmpClient, QmpError

if TYPE_CHECKING:
    from vhdtool.nbd import NbdServer

log = logging.getLogger("vhdtool.run")

QMP_CONNECT_TIMEOUT = 30.0
QUIT_TIMEOUT = 5.0
ARRIVAL_POLL = 0.05
PR_SET_PDEATHSIG = 1

STOP_REASONS = {
    "guest-shutdown": "powered off",
    "guest-reset": "reset (a reboot, or a panic with panic=-1: QEMU runs with -no-reboot)",
    "guest-panic": "panicked",
    "host-qmp-quit": "stopped by a QMP quit",
    "host-qmp-system-reset": "reset over QMP",
    "host-signal": "stopped: QEMU got a signal",
}


@dataclass(slots=True)
class RunOptions:
    images: list[str]
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    memory: str = "512M"
    cpus: int = 1
    accel: str = "auto"
    snapshot: bool = False
    expect: str | None = None
    timeout: float | None = None
    console: bool = False
    net: str = "none"
    qmp: str | None = None
    agent: bool = False
    name: str | None = None
    incoming: str | None = None
    """Wait for a migration at this address (``unix:PATH``, ``tcp:HOST:PORT``) instead of booting."""


class GuestFailed(VhdError):
    """The guest did not do what was expected (no match, stopped early, still running)."""


class Stopped(VhdError):
    """The run was ended by a signal; the guest was stopped cleanly."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name}: guest stopped, its disks flushed into the images")
        self.exit_code = 128 + signum


class _Stderr:
    """Status lines and QEMU's messages on stderr. While an interactive console holds the
    terminal in raw mode, a bare \n does not return the cursor, so lines end in \r\n then."""

    raw = False

    @classmethod
    def line(cls, text: str) -> None:
        sys.stderr.write(text + ("\r\n" if cls.raw else "\n"))
        sys.stderr.flush()


def _say(message: str) -> None:
    _Stderr.line(f"vhdtool: {message}")


def memory_mib(text: str) -> int:
    """``--memory``: 512M, 2G, or a bare number of MiB as QEMU takes it."""
    value = int(text) << 20 if text.isdigit() else parse_size(text)[1]
    if value < 64 << 20 or value % (1 << 20):
        raise UsageError(f"--memory {text}: give at least 64M, in whole MiB")
    return value >> 20


def _check_inputs(o: RunOptions) -> re.Pattern[str] | None:
    if not o.images:
        raise UsageError("name at least one image to boot")
    for image in o.images:
        if not os.path.isfile(image):
            raise UsageError(f"{image}: no such image file")
    if o.kernel is None and (o.initrd is not None or o.append is not None):
        raise UsageError("--initrd and --append need --kernel")
    for option, path in (("--kernel", o.kernel), ("--initrd", o.initrd)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{option} {path}: no such file")
    memory_mib(o.memory)
    if o.cpus < 1:
        raise UsageError(f"--cpus {o.cpus}: at least 1")
    if o.timeout is not None and o.timeout <= 0:
        raise UsageError(f"--timeout {o.timeout:g}: must be positive")
    if o.net not in ("none", "user"):
        raise UsageError(f"--net {o.net!r}: choose none or user")
    if o.qmp is not None:
        if len(os.fsencode(os.path.abspath(o.qmp))) > state.SOCKET_PATH_MAX:
            raise UsageError(f"--qmp {o.qmp}: too long for a unix socket path")
        if os.path.exists(o.qmp):
            raise UsageError(f"--qmp {o.qmp}: exists already")
    if o.name is not None:
        state.check_name(o.name)
    if o.incoming is not None:
        address.parse(o.incoming, "--incoming")
    if o.expect is None:
        return None
    try:
        return re.compile(o.expect, re.MULTILINE)
    except re.error as e:
        raise UsageError(f"--expect {o.expect!r}: not a regular expression: {e}") from None


def _check_bootable(disk: GuestDisk) -> None:
    """Without --kernel the first image must carry BIOS boot code (MBR boot sector)."""
    sector = first_sector(disk.device)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise UsageError(f"{disk.image}: no boot sector (no 55AA signature): give --kernel to boot a kernel directly")
    if not any(sector[:440]):
        raise UsageError(f"{disk.image}: no bootloader (the MBR boot code is empty): give --kernel to boot a kernel")


def _log_to_stderr() -> None:
    """Warnings of the NBD server and the control socket, one line each on stderr."""
    for name in ("vhdtool.nbd", "vhdtool.run"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(f"vhdtool: {name.split('.')[-1]}: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.WARNING)
            logger.propagate = False


def _die_with_parent() -> None:
    """In QEMU's child process: be killed when the runner dies, whatever kills it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run(options: RunOptions) -> int:
    """Boot the guest and wait for it; returns the exit code or raises a VhdError."""
    pattern = _check_inputs(options)
    binary = qemu.find_qemu()
    accel = host.choose(options.accel)
    _say(accel.describe())
    try:
        return asyncio.run(_Run(options, pattern, binary, accel).main())
    except Stopped as e:
        _say(str(e))
        return e.exit_code


class _Run:
    def __init__(self, o: RunOptions, pattern: re.Pattern[str] | None, binary: str, accel: host.Accel) -> None:
        self.o = o
        self.pattern = pattern
        self.binary = binary
        self.accel = accel
        self.started = time.monotonic()
        self.claim: state.Claim | None = None
        self.disks: list[GuestDisk] = []
        self.scratch: str | None = None
        self.server: NbdServer | None = None
        self.nbd_socket = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QmpClient | None = None
        self.qmp_public = ""
        self.agent_socket: str | None = None
        self.control_socket = ""
        self.console = ConsoleLog(sys.stdout.buffer, pattern)
        self.matched = asyncio.Event()
        self.stop = asyncio.Event()
        self.signum: int | None = None
        self.escaped = False
        """The user pressed Ctrl-] on the interactive console."""
        self.qemu_stderr: collections.deque[str] = collections.deque(maxlen=8)
        self._stderr_task: asyncio.Task[None] | None = None
        self.incoming = address.parse(o.incoming, "--incoming") if o.incoming is not None else None
        self.incoming_server: NbdServer | None = None
        """With --incoming: the disks served to the source's mirror, until the guest resumes here."""
        self.arrived = False
        """With --incoming: the migration has arrived and the guest runs here."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- set-up and tear-down ----------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        async with contextlib.AsyncExitStack() as cleanup:
            self.claim = state.claim(self.o.name, self.o.images[0])
            cleanup.callback(self.claim.release)
            self.disks, self.scratch = await asyncio.to_thread(open_disks, self.o.images, self.o.snapshot)
            cleanup.push_async_callback(self._close_disks)
            if self.o.kernel is None and self.incoming is None:
                _check_bootable(self.disks[0])
            await self._start_servers(cleanup)
            await self._start_qemu(cleanup)
            self.claim.write(self._entry())
            assert self.qmp is not None
            if self.incoming is not None:
                _say(
                    f"guest {self.claim.name} waiting for a migration on {self.incoming.uri}, its disks served "
                    f"on {self.incoming.describe_disks()} (state: {self.claim.entry_path}, QMP: {self.qmp_public})"
                )
                arrival = asyncio.create_task(self._await_arrival())
                cleanup.callback(arrival.cancel)
            else:
                _say(f"guest {self.claim.name} running (state: {self.claim.entry_path}, QMP: {self.qmp_public})")
                await self.qmp.execute("cont")
            return await self._wait()
        raise AssertionError("unreachable")  # pragma: no cover

    def _on_escape(self) -> None:
        self.escaped = True
        self.stop.set()

    def _on_signal(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self.stop.set()

    async def _start_servers(self, cleanup: contextlib.AsyncExitStack) -> None:
        from vhdtool.nbd import NbdServer
        from vhdtool.nbd.layercontrol import LayerControl

        assert self.claim is not None
        _log_to_stderr()
        server = self.server = NbdServer()
        for disk in self.disks:
            server.add_export(disk.id, disk.device, description=disk.image)
        self.nbd_socket = self.claim.socket("nbd.sock")
        self.control_socket = self.claim.socket("control.sock")
        self.qmp_public = os.path.abspath(self.o.qmp) if self.o.qmp else self.claim.socket("qmp.sock")
        if self.o.agent:
            self.agent_socket = self.claim.socket("agent.sock")
        await server.listen_unix(self.nbd_socket)
        cleanup.push_async_callback(server.close)
        if self.incoming is not None:
            await self._serve_incoming(cleanup)
        layer_control = LayerControl(server, self.control_socket)
        await layer_control.start()
        cleanup.push_async_callback(layer_control.close)

    async def _serve_incoming(self, cleanup: contextlib.AsyncExitStack) -> None:
        """Serve the disks to the source's mirror on the address beside the migration's: a server
        of their own, closed once the guest runs here, so nobody writes behind its back."""
        from vhdtool.nbd import NbdServer
        from vhdtool.nbd.server import _remove_stale_socket as remove_stale_socket

        assert self.incoming is not None
        if self.incoming.path is not None:
            remove_stale_socket(self.incoming.path)  # QEMU would replace whatever is there
        server = self.incoming_server = NbdServer()
        for disk in self.disks:
            server.add_export(disk.id, disk.device, description=disk.image)
        if self.incoming.disks_path is not None:
            await server.listen_unix(self.incoming.disks_path)
        else:
            await server.listen_tcp(self.incoming.host, self.incoming.disks_port)
        cleanup.push_async_callback(self._stop_incoming_server)

    async def _stop_incoming_server(self) -> None:
        server, self.incoming_server = self.incoming_server, None
        if server is not None:
            await server.close()

    async def _await_arrival(self) -> None:
        """Once QEMU resumes the guest (the migration has arrived), stop serving the disks to the
        source and say so."""
        assert self.qmp is not None
        while not any(e.get("event") == "RESUME" for e in self.qmp.events):
            await asyncio.sleep(ARRIVAL_POLL)
        self.arrived = True
        await self._stop_incoming_server()
        _say(f"migration arrived after {self.elapsed():.1f} s: the guest runs here")

    async def _close_disks(self) -> None:
        serving = {name: export.device for name, export in self.server.exports.items()} if self.server else {}
        await asyncio.to_thread(close_disks, self.disks, serving, self.scratch)

    async def _start_qemu(self, cleanup: contextlib.AsyncExitStack) -> None:
        assert self.claim is not None
        private = self.claim.socket("runner.qmp")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(private)
            listener.listen(1)
        except BaseException:
            listener.close()
            raise
        spec = qemu.MachineSpec(
            name=self.claim.name,
            accel=self.accel,
            memory_mib=memory_mib(self.o.memory),
            cpus=self.o.cpus,
            disks=[qemu.DiskSpec(d.id, self.nbd_socket, d.id) for d in self.disks],
            runner_monitor_fd=listener.fileno(),
            monitor=self.qmp_public,
            kernel=self.o.kernel,
            initrd=self.o.initrd,
            append=self.o.append,
            agent_socket=self.agent_socket,
            net=self.o.net,
            incoming=self.incoming.uri if self.incoming is not None else None,
        )
        argv = qemu.command_line(self.binary, spec)
        log.debug("qemu: %s", argv)
        with listener:  # closed here once QEMU has its copy: a QEMU that dies then resets our connection
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=[listener.fileno()],
                process_group=0,  # Ctrl-C reaches the runner only; the runner stops QEMU in order
                preexec_fn=_die_with_parent,
            )
        sockets = [private, self.qmp_public, self.agent_socket, self.incoming.path if self.incoming else None]
        cleanup.push_async_callback(self._stop_qemu, sockets)
        self._stderr_task = asyncio.create_task(self._pump_stderr())
        self.qmp = await self._connect_qmp(private)

    async def _connect_qmp(self, path: str) -> QmpClient:
        """Connect to QEMU's monitor; QEMU answers once its machine is set up, or dies trying."""
        assert self.proc is not None
        connect = asyncio.create_task(QmpClient.connect(path))
        others = {asyncio.create_task(self.proc.wait()), asyncio.create_task(self.stop.wait())}
        first = asyncio.FIRST_COMPLETED
        done, _ = await asyncio.wait({connect, *others}, timeout=QMP_CONNECT_TIMEOUT, return_when=first)
        for task in others:
            task.cancel()
        if connect in done and connect.exception() is None:
            return connect.result()
        connect.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError, QmpError, ValueError):
            await connect
        if self.signum is not None:
            raise Stopped(self.signum)
        if not done:
            raise VhdError(f"QEMU did not answer on its monitor within {QMP_CONNECT_TIMEOUT:g} s")
        if self.proc.returncode is None:
            # the monitor failed but QEMU lives on: give it a moment to exit with its reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), QUIT_TIMEOUT)
        await self._drain_stderr()
        last = self.qemu_stderr[-1] if self.qemu_stderr else f"exit code {self.proc.returncode}"
        raise VhdError(f"QEMU failed to start: {last}")

    async def _stop_qemu(self, sockets: list[str | None]) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if self.qmp is not None:
                with contextlib.suppress(QmpError, TimeoutError):
                    await asyncio.wait_for(self.qmp.execute("quit"), QUIT_TIMEOUT)
            try:
                await asyncio.wait_for(proc.wait(), QUIT_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.qmp is not None:
            await self.qmp.close()
        for path in sockets:
            if path is not None:
                state.unlink_socket(path)

    async def _drain_stderr(self) -> None:
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)

    async def _pump_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self.qemu_stderr.append(text)
                _Stderr.line(text)

    async def _pump_console(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while data := await self.proc.stdout.read(65536):
            if self.console.feed(data):
                self.matched.set()

    # --- the run ----------------------------------------------------------------------------

    async def _wait(self) -> int:
        console = asyncio.create_task(self._pump_console())
        waits = {console, asyncio.create_task(self.matched.wait()), asyncio.create_task(self.stop.wait())}
        if self.o.timeout is not None:
            remaining = max(self.o.timeout - self.elapsed(), 0.0)
            waits.add(asyncio.create_task(asyncio.sleep(remaining)))
        with self._interactive():
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits - {console}:
                    task.cancel()
        if self.matched.is_set():
            assert self.console.matched is not None
            self.console.end_line()
            _say(f"matched {self.console.matched.group(0)!r} after {self.elapsed():.1f} s; stopping the guest")
            return 0
        if self.signum is not None:
            raise Stopped(self.signum)
        if self.escaped:
            _say(f"Ctrl-] after {self.elapsed():.1f} s: stopping the guest")
            return 0
        if console.done():
            return await self._stopped_by_itself()
        return self._timed_out()

    async def _stopped_by_itself(self) -> int:
        assert self.proc is not None and self.qmp is not None
        code = await self.proc.wait()
        await self._drain_stderr()
        await self.qmp.wait_closed(1.0)  # the SHUTDOWN event may still be on its way
        reason = self.qmp.shutdown_reason
        if reason is None and code != 0:
            last = self.qemu_stderr[-1] if self.qemu_stderr else f"exit code {code}"
            if self.incoming is not None and not self.arrived:
                raise VhdError(
                    f"the incoming migration failed after {self.elapsed():.1f} s ({last}); the guest did not "
                    "start here and its images keep what the mirror had copied"
                )
            raise VhdError(f"QEMU stopped with an error after {self.elapsed():.1f} s: {last}")
        if self._migrated_away():
            _say(f"guest migrated away after {self.elapsed():.1f} s: stopped here, closing its images")
            return 0
        what = STOP_REASONS.get(reason or "", f"stopped ({reason or f'QEMU exit code {code}'})")
        if self.pattern is not None:
            self._show_last_lines()
            raise GuestFailed(f"the guest {what} after {self.elapsed():.1f} s without printing {self.o.expect!r}")
        _say(f"guest {what} after {self.elapsed():.1f} s")
        return 0

    def _migrated_away(self) -> bool:
        """QEMU reported a completed outgoing migration (``vhdtool migrate`` turns on its events)."""
        assert self.qmp is not None
        return any(
            e.get("event") == "MIGRATION" and e.get("data", {}).get("status") == "completed" for e in self.qmp.events
        )

    def _timed_out(self) -> int:
        self._show_last_lines()
        if self.pattern is not None:
            raise GuestFailed(
                f"no match for {self.o.expect!r} after {self.elapsed():.1f} s (--timeout {self.o.timeout:g}); "
                "guest stopped"
            )
        waited = f"{self.elapsed():.1f} s (--timeout {self.o.timeout:g})"
        raise GuestFailed(f"guest still running after {waited}; stopped it")

    def _show_last_lines(self) -> None:
        lines = self.console.last_lines()
        if not lines:
            _say("the guest printed nothing on its console")
            return
        _say("last console lines:")
        for line in lines:
            _Stderr.line(f"  | {line}")

    @contextlib.contextmanager
    def _interactive(self) -> Any:
        """With --console: the terminal's input goes to the guest's serial port."""
        if not self.o.console:
            yield
            return
        assert self.proc is not None and self.proc.stdin is not None
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        stdin = self.proc.stdin

        def eof() -> None:
            loop.remove_reader(fd)

        with raw_terminal(fd) as is_tty:
            _Stderr.raw = is_tty
            if is_tty:
                _say("interactive console: Ctrl-] stops the guest")
            loop.add_reader(fd, keys_forwarder(fd, stdin.write, self._on_escape, eof))
            try:
                yield
            finally:
                loop.remove_reader(fd)
                _Stderr.raw = False

    # --- the state entry -------------------------------------------------------------------

    def _entry(self) -> dict[str, Any]:
        assert self.proc is not None
        return {
            "pid": os.getpid(),
            "qemu_pid": self.proc.pid,
            "started": time.time() - self.elapsed(),
            "accel": self.accel.name,
            "qmp": self.qmp_public,
            "agent": self.agent_socket,
            "control": self.control_socket,
            "snapshot": self.o.snapshot,
            "scratch": self.scratch,
            "incoming": self.incoming.uri if self.incoming is not None else None,
            "disks": [
                {"id": d.id, "export": d.id, "image": d.image, "nbd": {"socket": self.nbd_socket, "export": d.id}}
                for d in self.disks
            ],
        }
