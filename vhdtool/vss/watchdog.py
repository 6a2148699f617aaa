"""The watchdog: a separate process that thaws the group if the coordinator dies mid-window.

A guest must never stay frozen (oVirt's vdsm#160 records a freeze stuck for 27,905 s). Threads
die with the coordinator, so the watchdog is its own process, in its own session (a Ctrl-C or a
kill of the coordinator's process group does not reach it), started before the first freeze.

The coordinator writes the plan — plugin name and options, guests, disks and new layers — as one
JSON line on the watchdog's stdin and keeps the pipe open. It then sends ``committed`` once every
disk was switched and ``released`` once every guest is thawed; the watchdog exits on
``released``. The kernel closes the pipe however the coordinator ends, ``kill -9`` included, so
end-of-file before ``released`` means the coordinator is gone: the watchdog builds the plugin
again from the plan (guest-agent and QMP sockets accept a new client once the coordinator's
connection is closed) and

- before ``committed``: switches every disk that already writes to its new layer back to its old
  top (the guests are still frozen, so nothing is lost), thaws or resumes every guest, removes
  the new layers and the group's record — as if the snapshot had never been asked for;
- after ``committed``: thaws or resumes every guest; the snapshot stands.

If the coordinator is alive but silent past the plan's deadline (freeze timeout + hold timeout +
a grace period), the watchdog kills it first, then does the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import VhdError
from vhdtool.vss import catalogue
from vhdtool.vss.plugin import Disk, Hypervisor
from vhdtool.vss.rollback import NewLayer, roll_back

RESCUE_FOR = 600.0
"""How long the watchdog keeps trying to thaw a guest that does not answer."""

ATTEMPT_TIMEOUT = 10.0


class WatchdogError(VhdError):
    """The watchdog could not be started."""


# --- the coordinator's side ----------------------------------------------------------------


class WatchdogHandle:
    """The coordinator's end of the pipe to a running watchdog."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, plan: dict[str, Any], ready_timeout: float = 20.0) -> WatchdogHandle:
        """Start the watchdog with ``plan`` and wait until it has armed itself."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhdtool.vss.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(plan).encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], ready_timeout)
            line = proc.stdout.readline() if ready else b""
        except OSError as e:
            proc.kill()
            raise WatchdogError(f"watchdog did not start: {e}") from None
        if line.strip() != b"armed":
            proc.kill()
            proc.wait()
            raise WatchdogError("watchdog did not arm itself; no guest was frozen")
        proc.stdout.close()
        return cls(proc)

    def _send(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # it died: nothing to tell it any more
            pass

    def committed(self) -> None:
        self._send("committed")

    def release(self) -> None:
        """Every guest is thawed: let the watchdog exit without acting."""
        self._send("released")
        self._close_and_wait()

    def hand_over(self) -> None:
        """Leave the remaining rescue to the watchdog (the coordinator gives up) and return."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def _close_and_wait(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        return self.proc.pid


# --- the watchdog's side -------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    hypervisor: str
    options: dict[str, str]
    coordinator: int
    deadline: float
    catalogue_dir: str
    group: str
    guests: list[dict[str, Any]]


def _log(message: str) -> None:
    with contextlib.suppress(OSError):  # the coordinator's terminal may be gone
        print(f"vhdtool watchdog: {message}", file=sys.stderr, flush=True)


def _retry(what: str, fn: Callable[[], None], give_up_at: float) -> None:
    """Call ``fn`` until it succeeds; past ``give_up_at``, log and raise its last error."""
    delay = 0.2
    while True:
        try:
            fn()
            return
        except Exception as e:  # keep trying whatever the plugin raises: a frozen guest is worse
            if time.monotonic() + delay >= give_up_at:
                _log(f"{what} failed, giving up: {e}")
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def rescue(hv: Hypervisor, plan: _Plan, committed: bool) -> bool:
    """Put every guest of the plan back to running and thawed; unless committed, undo the
    snapshot (``rollback.roll_back``). True when every step succeeded."""
    give_up_at = time.monotonic() + RESCUE_FOR
    modes = {g["name"]: g["mode"] for g in plan.guests}
    layers = [] if committed else [
        NewLayer(g["name"], Disk(d["id"], d["path"]), d["layer"]) for g in plan.guests for d in g["disks"]
    ]  # fmt: skip

    def writes_to_new(nl: NewLayer) -> bool | None:
        try:
            active = hv.status(nl.guest, ATTEMPT_TIMEOUT).active_layers.get(nl.disk.id)
        except Exception as e:
            _log(f"{nl.guest}: cannot tell where disk {nl.disk.id} writes ({e}); keeping {nl.layer}")
            return None
        return active is not None and os.path.realpath(active) == os.path.realpath(nl.layer)

    def switch_back(nl: NewLayer) -> None:
        what = f"{nl.guest}: switching disk {nl.disk.id} back"
        _retry(what, lambda: hv.switch_disk(nl.guest, nl.disk, nl.disk.path, ATTEMPT_TIMEOUT), give_up_at)

    def release(name: str) -> None:
        failed: Exception | None = None
        if modes[name] == "freeze":
            try:
                _retry(f"{name}: thaw", lambda: hv.thaw(name, ATTEMPT_TIMEOUT), give_up_at)
            except Exception as e:
                failed = e
        # a guest planned for a freeze may have been paused instead (--quiesce preferred): resume
        # is idempotent, so every guest gets one
        try:
            _retry(f"{name}: resume", lambda: hv.resume(name, ATTEMPT_TIMEOUT), give_up_at)
        except Exception as e:
            failed = failed or e
        _log(f"{name}: thawed and running" if failed is None else f"{name}: could not be thawed or resumed")
        if failed is not None:
            raise failed

    done = roll_back(
        layers,
        list(modes),
        writes_to_new=writes_to_new,
        switch_back=switch_back,
        release=release,
        timeout=max(give_up_at - time.monotonic(), 0.0) + ATTEMPT_TIMEOUT,
    )
    if not committed and not done.kept:
        catalogue.remove(plan.group, plan.catalogue_dir)
    return not done.kept and not done.stuck


def _read_line(fd: int, buffer: bytes) -> tuple[bytes | None, bytes]:
    """One line from ``fd`` (None at end of file) and what was read past it. Raw os.read, so
    that no buffered reader holds bytes that select() cannot see."""
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, buffer
        buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    return line, rest


def _wait_for_coordinator(plan: _Plan, fd: int, buffer: bytes) -> tuple[bool, bool]:
    """Follow the coordinator's messages. Returns (released, committed)."""
    committed = False
    end = time.monotonic() + plan.deadline
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            word = line.strip().decode(errors="replace")
            if word == "released":
                return True, committed
            if word == "committed":
                committed = True
        left = end - time.monotonic()
        if left <= 0:
            if os.getppid() == plan.coordinator:  # never signal a recycled pid
                _log(f"coordinator {plan.coordinator} passed its deadline with guests frozen; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(plan.coordinator, signal.SIGKILL)
            return False, committed
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return False, committed
        buffer += chunk


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    try:
        line, buffer = _read_line(fd, b"")
        if line is None:
            return 0  # the coordinator changed its mind before arming us
        doc = json.loads(line)
        plan = _Plan(
            hypervisor=doc["hypervisor"],
            options=dict(doc["options"]),
            coordinator=int(doc["coordinator"]),
            deadline=float(doc["deadline"]),
            catalogue_dir=str(doc["catalogue"]),
            group=str(doc["group"]),
            guests=list(doc["guests"]),
        )
        from vhdtool.vss.mixed import NAME as MIXED
        from vhdtool.vss.mixed import MixedHypervisor
        from vhdtool.vss.registry import plugin_class

        # fail now, while the coordinator can still refuse
        cls = MixedHypervisor if plan.hypervisor == MIXED else plugin_class(plan.hypervisor)
    except Exception as e:
        _log(f"bad plan: {e}")
        return 1
    sys.stdout.write("armed\n")
    sys.stdout.flush()
    sys.stdout.close()
    released, committed = _wait_for_coordinator(plan, fd, buffer)
    if released:
        return 0
    names = ", ".join(g["name"] for g in plan.guests)
    _log(f"coordinator {plan.coordinator} gone {'after' if committed else 'before'} the switch; rescuing {names}")
    try:
        hv = cls(plan.options)
    except Exception as e:
        _log(f"cannot reach hypervisor {plan.hypervisor}: {e}")
        return 1
    try:
        return 0 if rescue(hv, plan, committed) else 1
    finally:
        hv.close()


if __name__ == "__main__":
    sys.exit(main())
