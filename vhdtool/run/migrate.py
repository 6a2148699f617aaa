"""`vhdtool migrate`: move a running guest to a destination runner, its disks with it.

QEMU's own migration does the work; this module drives it over the source guest's QMP socket.
The destination is a `vhdtool run --incoming ADDRESS`, whose runner serves the guest's new VHDs
on the address beside ADDRESS (see ``address``). In order:

1. **mirror** — per disk, an ``nbd`` node on the destination's export of the same name and a
   ``blockdev-mirror`` (sync full, copy-mode write-blocking) into it: the disk is copied while the
   guest runs, and once the job is ready every guest write reaches both sides before it completes.
2. **RAM** — ``migrate`` with ``return-path`` (the source completes only once the destination
   says it loaded everything) and ``pause-before-switchover`` (QEMU stops the guest and waits
   before it sends the device state and lets go of the disks).
3. **switch-over** — in that pause, with the guest stopped: each mirror job is ended without a
   pivot (its last writes flushed to the destination) and its node deleted; then
   ``migrate-continue``. The destination loads the device state and starts the guest itself;
   the source is left stopped, its disks inactive.
4. the source QEMU is quit and its runner exits (images closed, state entry removed).

Any failure, Ctrl-C or SIGTERM before ``migrate-continue`` is rolled back: the migration is
cancelled (QEMU resumes the guest here if it had stopped it), the mirror jobs abandoned and their
nodes deleted, and the destination stopped — its QEMU quits when its incoming stream breaks, or
is made to by a connection that sends nothing when the stream never started. Its images keep the
partial copy: nothing reads them but a new migration, which copies every block again. After
``migrate-continue`` QEMU decides: completed (the guest runs there) or failed (QEMU resumes it
here, the destination never started it). The source never runs after the destination started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vhdtool.errors import UsageError, VhdError
from vhdtool.run import address, state
from vhdtool.run.qmp import QmpClient, QmpError

POLL = 0.01
"""Seconds between QMP polls of the migration: its pause before the switch-over is found by them."""
SWITCH_POLL = 0.002
"""Seconds between polls while the guest is stopped: each wait adds to the downtime."""
DOWNTIME_LIMIT_MS = 100
"""The pause QEMU aims at when it decides to stop the guest (its default: 300 ms)."""
CONNECT_TIMEOUT = 10.0
STEP_TIMEOUT = 60.0
"""Longest wait for one mirror job to end or the migration to settle after a cancel."""
SOURCE_EXIT_TIMEOUT = 30.0
NODE_PREFIX = "migrate-"
"""Mirror target nodes and jobs are named migrate-vda, migrate-vdb, ..."""
ACTIVE_STATES = ("setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug")
UNLIMITED_BANDWIDTH = 1 << 40
"""A bandwidth QEMU never reaches: without it, QEMU applies its own default cap to the migration."""

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phase is "disks" or "RAM"."""


class MigrationFailed(VhdError):
    """The migration did not happen; the guest still runs on the source."""


class Interrupted(MigrationFailed):
    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass(slots=True)
class DiskCopy:
    id: str
    image: str
    bytes: int = 0


@dataclass(slots=True)
class Migration:
    name: str
    to: str
    total_ms: int = 0
    downtime_ms: int = 0
    switch_over_ms: int = 0
    """Of the downtime: from finding the guest stopped to letting QEMU go on (the mirrors ending)."""
    ram_bytes: int = 0
    disks: list[DiskCopy] = field(default_factory=list)

    @property
    def transferred_bytes(self) -> int:
        return self.ram_bytes + sum(d.bytes for d in self.disks)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "to": self.to,
            "total_ms": self.total_ms,
            "downtime_ms": self.downtime_ms,
            "switch_over_ms": self.switch_over_ms,
            "transferred_bytes": self.transferred_bytes,
            "ram_bytes": self.ram_bytes,
            "disks": [{"id": d.id, "image": d.image, "bytes": d.bytes} for d in self.disks],
        }


def migrate(
    name: str,
    to: str,
    bandwidth: int | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> Migration:
    """Move the running guest ``name`` to the destination waiting at ``to``; raises
    MigrationFailed (the guest still runs here) or VhdError."""
    target = address.parse(to, "--to")
    if bandwidth is not None and bandwidth <= 0:
        raise UsageError(f"--bandwidth {bandwidth}: must be positive")
    entry = state.find(name)
    job = _Migrate(entry, target, bandwidth, progress or (lambda *_: None), say or (lambda _: None))
    return asyncio.run(job.main())


class _Migrate:
    def __init__(
        self,
        entry: state.Entry,
        target: address.MigrationAddress,
        bandwidth: int | None,
        progress: Progress,
        say: Callable[[str], None],
    ) -> None:
        self.entry = entry
        self.target = target
        self.bandwidth = bandwidth
        self.progress = progress
        self.say = say
        self.qmp: QmpClient | None = None
        self.result = Migration(entry.name, target.uri)
        self.nodes: list[str] = []
        """Mirror target nodes added on the source (each job has the same id)."""
        self.jobs: list[str] = []
        self.migrating = False
        """``migrate`` was sent: the destination's stream is open."""
        self.committed = False
        """``migrate-continue`` was sent: QEMU decides the outcome now, nothing is rolled back."""
        self.signum: int | None = None

    async def main(self) -> Migration:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig, task)
        try:
            try:
                self.qmp = await self._connect()
                await self._move()
            except BaseException as e:
                if self.committed:
                    raise
                reason = self._reason(e)
                await asyncio.shield(self._roll_back())
                here = f"{self.entry.name} still runs here, the destination was stopped"
                if not any(other.name == self.entry.name for other in state.entries()):
                    here = f"the source runner of {self.entry.name} has gone, the destination was stopped"
                if self.signum is not None:
                    raise Interrupted(f"{reason}: migration cancelled; {here}", self.signum) from None
                raise MigrationFailed(f"{reason}; {here}") from None
            self.result.total_ms = round((time.monotonic() - started) * 1000)
            await self._stop_source()
            return self.result
        finally:
            if self.qmp is not None:
                await self.qmp.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_signal(self, signum: int, task: asyncio.Task[Any]) -> None:
        if self.committed or self.signum is not None:
            return  # past the point of no return QEMU finishes the switch-over in moments
        self.signum = signum
        task.cancel()

    def _reason(self, e: BaseException) -> str:
        if self.signum is not None:
            return signal.Signals(self.signum).name
        if isinstance(e, VhdError):
            return str(e)
        if isinstance(e, asyncio.CancelledError):
            return "cancelled"
        return f"internal error: {e!r}"

    async def _connect(self) -> QmpClient:
        try:
            return await asyncio.wait_for(QmpClient.connect(self.entry.qmp), CONNECT_TIMEOUT)
        except TimeoutError:
            raise VhdError(f"{self.entry.qmp}: QMP did not answer (another client holds it?)") from None
        except OSError as e:
            raise VhdError(f"{self.entry.qmp}: cannot connect to the guest's QMP: {e.strerror or e}") from None

    async def _execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self.qmp is not None
        return await self.qmp.execute(command, arguments)

    # --- the way forward ---------------------------------------------------------------------

    async def _move(self) -> None:
        await self._clear_leftovers()
        status = (await self._execute("query-status"))["status"]
        if status != "running":
            raise MigrationFailed(f"guest {self.entry.name} is {status}, not running: nothing was migrated")
        await self._capabilities(True, "events", "return-path", "pause-before-switchover")
        await self._execute(
            "migrate-set-parameters",
            {"max-bandwidth": self.bandwidth or UNLIMITED_BANDWIDTH, "downtime-limit": DOWNTIME_LIMIT_MS},
        )
        await self._mirror()
        await self._copy_ram()
        await self._switch_over()

    async def _clear_leftovers(self) -> None:
        """Roll back what an earlier `migrate` killed on its way left behind: a migration waiting
        before its switch-over (the guest stopped), mirror jobs, their nodes. Holding the guest's
        QMP socket, which takes one client at a time, means that no other `migrate` runs."""
        status = (await self._execute("query-migrate")).get("status")
        found = [j["id"] for j in await self._execute("query-jobs") if str(j["id"]).startswith(NODE_PREFIX)]
        nodes = [n for n in await self._node_sizes() if n.startswith(NODE_PREFIX)]
        if status not in ACTIVE_STATES and not found and not nodes:
            return
        self.say("rolling back an earlier migration that was left unfinished")
        self.migrating, self.jobs, self.nodes = status in ACTIVE_STATES, found, nodes
        await self._roll_back(stop_destination=False)
        self.migrating, self.jobs, self.nodes = False, [], []

    async def _capabilities(self, on: bool, *names: str) -> None:
        await self._execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": c, "state": on} for c in names]}
        )

    async def _mirror(self) -> None:
        disks = self.entry.disks
        self.say(f"mirroring {', '.join(str(d['id']) for d in disks)} to {self.target.describe_disks()}")
        sizes = await self._node_sizes()
        for disk in disks:
            disk_id = str(disk["id"])
            node = f"{NODE_PREFIX}{disk_id}"
            try:
                await self._execute(
                    "blockdev-add",
                    {"driver": "nbd", "node-name": node, "server": self.target.disks_server(), "export": disk_id},
                )
            except QmpError as e:
                raise MigrationFailed(
                    f"{disk_id}: the destination serves no such disk at {self.target.describe_disks()} "
                    f"(is it a `vhdtool run --incoming {self.target.uri}` with as many images?): {e}"
                ) from None
            self.nodes.append(node)
            theirs, ours = (await self._node_sizes()).get(node), sizes.get(disk_id)
            if theirs != ours:
                raise MigrationFailed(f"{disk_id}: the destination's image holds {theirs} bytes, this one {ours}")
            arguments: dict[str, Any] = {
                "job-id": node,
                "device": disk_id,
                "target": node,
                "sync": "full",
                "copy-mode": "write-blocking",
                "auto-dismiss": False,
            }
            if self.bandwidth:
                arguments["speed"] = self.bandwidth
            await self._execute("blockdev-mirror", arguments)
            self.jobs.append(node)
            self.result.disks.append(DiskCopy(disk_id, str(disk.get("image", ""))))
        while True:
            jobs = await self._jobs()
            self.progress("disks", sum(j["current-progress"] for j in jobs), sum(j["total-progress"] for j in jobs))
            if all(j["status"] == "ready" for j in jobs):
                return
            await asyncio.sleep(POLL * 10)

    async def _node_sizes(self) -> dict[str, int]:
        nodes = await self._execute("query-named-block-nodes", {"flat": True})
        return {str(n["node-name"]): int(n["image"]["virtual-size"]) for n in nodes}

    async def _jobs(self) -> list[dict[str, Any]]:
        """Our mirror jobs; a job that ended with an error raises."""
        found = {j["id"]: j for j in await self._execute("query-jobs")}
        jobs = []
        for node in self.jobs:
            job = found.get(node)
            if job is None:
                raise MigrationFailed(f"mirror {node}: the job disappeared")
            if job.get("error"):
                raise MigrationFailed(f"copying {node.removeprefix(NODE_PREFIX)} to the destination: {job['error']}")
            if job["status"] in ("concluded", "null", "aborting"):
                raise MigrationFailed(f"mirror {node}: the job ended early ({job['status']})")
            jobs.append(job)
        return jobs

    async def _copy_ram(self) -> None:
        self.say(f"disks in sync; copying RAM and device state to {self.target.uri}")
        self.migrating = True
        try:
            await self._execute("migrate", {"uri": self.target.uri})
        except QmpError as e:
            raise MigrationFailed(f"cannot start the migration to {self.target.uri}: {e}") from None
        while True:
            info = await self._execute("query-migrate")
            status = info.get("status")
            ram = info.get("ram", {})
            total = int(ram.get("total", 0))
            self.progress("RAM", total - int(ram.get("remaining", total)), total)  # zero pages count as done
            if status == "pre-switchover":
                return
            if status in ("failed", "cancelled", "completed"):
                raise MigrationFailed(
                    f"copying RAM: migration {status}: {info.get('error-desc', 'no reason given')} (the destination "
                    "runner says why; it needs the same --memory, --cpus, --agent, --net and disks)"
                )
            await self._jobs()  # a mirror that failed (the destination gone) ends the migration too
            await asyncio.sleep(POLL)

    async def _switch_over(self) -> None:
        """With the guest stopped: end the mirrors (their last writes reach the destination),
        then let QEMU send the device state. From ``migrate-continue`` on, QEMU decides."""
        self.say("switching over")
        paused = time.monotonic()
        for job in self.jobs:
            await self._execute("block-job-cancel", {"device": job})
        for job in list(self.jobs):
            done = await self._wait_job_ended(job)
            if done.get("error"):
                raise MigrationFailed(f"finishing the copy of {job.removeprefix(NODE_PREFIX)} failed: {done['error']}")
            copy = next(d for d in self.result.disks if NODE_PREFIX + d.id == job)
            copy.bytes = int(done["current-progress"])
            await self._execute("job-dismiss", {"id": job})
            self.jobs.remove(job)
        for node in list(self.nodes):
            await self._execute("blockdev-del", {"node-name": node})
            self.nodes.remove(node)
        self.committed = True
        await self._execute("migrate-continue", {"state": "pre-switchover"})
        self.result.switch_over_ms = round((time.monotonic() - paused) * 1000)
        info = await self._settled()
        if info.get("status") != "completed":
            raise MigrationFailed(
                f"switch-over: migration {info.get('status')}: {info.get('error-desc', 'no reason given')} "
                "(the destination runner says why; it needs the same --memory, --cpus, --agent, --net and disks); "
                f"{self.entry.name} runs here again"
            )
        self.result.downtime_ms = int(info.get("downtime", 0))
        self.result.ram_bytes = int(info.get("ram", {}).get("transferred", 0))

    async def _wait_job_ended(self, job: str) -> dict[str, Any]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            found = {j["id"]: j for j in await self._execute("query-jobs")}
            if job not in found:
                return {"current-progress": 0}
            if found[job]["status"] == "concluded":
                return found[job]
            await asyncio.sleep(SWITCH_POLL)
        raise MigrationFailed(f"mirror {job}: did not end within {STEP_TIMEOUT:g} s")

    async def _settled(self) -> dict[str, Any]:
        """query-migrate once the migration has left its active states."""
        while True:
            info = await self._execute("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled", None):
                return info
            await asyncio.sleep(SWITCH_POLL)

    async def _stop_source(self) -> None:
        """Quit the source QEMU (stopped, its disks inactive) and wait for its runner to exit."""
        with contextlib.suppress(QmpError):
            await self._execute("quit")
        deadline = time.monotonic() + SOURCE_EXIT_TIMEOUT
        while any(e.name == self.entry.name for e in state.entries()):
            if time.monotonic() > deadline:
                raise VhdError(
                    f"the guest runs on the destination, but the source runner (pid {self.entry.pid}) did not exit "
                    f"within {SOURCE_EXIT_TIMEOUT:g} s; its QEMU is stopped"
                )
            await asyncio.sleep(POLL * 10)

    # --- the way back ------------------------------------------------------------------------

    async def _roll_back(self, stop_destination: bool = True) -> None:
        """Undo what was started, guest running here first; every step is tried."""
        if self.qmp is None:
            await asyncio.to_thread(_break_incoming, self.target)
            return
        with contextlib.suppress(VhdError, TimeoutError):
            if self.migrating:
                await self._execute("migrate_cancel")
                async with asyncio.timeout(STEP_TIMEOUT):
                    await self._settled()
            with contextlib.suppress(VhdError):
                await self._capabilities(False, "pause-before-switchover")
            if (await self._execute("query-status"))["status"] in ("paused", "postmigrate", "finish-migrate"):
                await self._execute("cont")
        for job in self.jobs:  # a job that failed has ended already: cancelling it fails, dismissing it not
            with contextlib.suppress(VhdError):
                await self._execute("block-job-cancel", {"device": job, "force": True})
            with contextlib.suppress(VhdError):
                await self._wait_job_ended(job)
            with contextlib.suppress(VhdError):
                await self._execute("job-dismiss", {"id": job})
        for node in self.nodes:
            with contextlib.suppress(VhdError):
                await self._execute("blockdev-del", {"node-name": node})
        if stop_destination and not self.migrating:
            await asyncio.to_thread(_break_incoming, self.target)


def _break_incoming(target: address.MigrationAddress) -> None:
    """Make a destination that still waits for its stream give up: QEMU quits when the stream it
    accepts ends before a migration header, and its runner exits."""
    with contextlib.suppress(OSError):
        if target.path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)
                sock.connect(target.path)
        else:
            socket.create_connection((target.host, target.port), timeout=5.0).close()
