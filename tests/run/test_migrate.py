"""`vhdtool migrate` with real guests: a source runner, destination runners started with
`--incoming`, and QEMU's migration between them over a unix socket and TCP on loopback.

The guest appends ``tick N`` to /data and syncs before it prints the same line on its console,
every 0.2 s. The oracle is the disk the guest ends on, read with `vhdtool cat`: ticks from 1 with
no gap and no repeat, whatever happened to the migrations on the way; and the console: the guest
keeps counting where it left off, on exactly one side.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, stop_process
from tests.run.conftest import Env, Guest, build_root_image

TICKER = "i=0; while true; do i=$((i+1)); echo tick $i >> /data; sync; echo tick $i; sleep 0.2; done"


class Runner:
    """A `vhdtool run` in the background, its console and messages in files."""

    def __init__(self, env: Env, name: str, *args: str | Path) -> None:
        self.name = name
        self.out = env.tmp / f"{name}.out"
        self.err = env.tmp / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = env.popen("run", *args, "--name", name, stdout=out, stderr=err)

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def last_tick(self) -> int:
        ticks = re.findall(r"^tick (\d+)", self.out.read_text(errors="replace"), re.MULTILINE)
        return int(ticks[-1]) if ticks else 0

    def _wait(self, done: Callable[[], bool], seconds: float, stuck: Callable[[], str]) -> None:
        """Until ``done``; fails when the runner exits first, or after ``seconds`` saying ``stuck()``."""
        end = time.monotonic() + seconds
        while not done():
            assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}: {self.text()[-800:]}"
            assert time.monotonic() < end, f"{self.name}{stuck()}: {self.text()[-800:]}"
            time.sleep(0.1)

    def wait_for(self, what: str, seconds: float = 120) -> None:
        self._wait(lambda: what in self.text(), seconds, lambda: f": no {what!r} within {seconds} s")

    def wait_ticking_past(self, tick: int, seconds: float = 60) -> None:
        self._wait(lambda: self.last_tick() > tick, seconds, lambda: f" stuck at tick {self.last_tick()}")

    def exit_code(self, seconds: float = 30) -> int:
        return self.proc.wait(seconds)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)


def incoming(
    env: Env, guest: Guest, name: str, size: int, address: str, *extra: str, data_size: int | None = None
) -> tuple[Runner, Path]:
    """A destination runner on a new empty image of ``size`` bytes (and a second one of
    ``data_size``, for vdb), waiting at ``address``."""
    image = env.tmp / f"{name}.vhd"
    vhdtool.create(image, size=size)
    images = [image]
    if data_size is not None:
        images.append(env.tmp / f"{name}-data.vhd")
        vhdtool.create(images[1], size=data_size)
    runner = Runner(env, name, *images, *env.boot_args(guest), "-m", "256M", "--incoming", address, *extra)
    runner.wait_for("waiting for a migration")
    return runner, image


def move(env: Env, source: Runner, dest: Runner, address: str) -> subprocess.CompletedProcess[str]:
    """`vhdtool migrate` of ``source``'s guest to ``dest`` waiting at ``address``, which must
    succeed: the source runner exits 0 and the guest ticks on at the destination."""
    moved = env.vhdtool("migrate", source.name, "--to", address)
    assert moved.returncode == 0, moved.stderr
    assert source.exit_code() == 0
    dest.wait_ticking_past(source.last_tick() + 2)
    return moved


def console_ticks(*runners: Runner) -> list[int]:
    """The ticks on the consoles of ``runners`` read one after the other: a line the guest was
    printing when it moved is completed on the next console."""
    text = "".join(r.out.read_text(errors="replace") for r in runners)
    lines = text.split("\n")[:-1]  # the last one may still be arriving
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(r"tick (\d+)\r?", line))]


def ticks_on(env: Env, image: Path) -> list[int]:
    got = env.vhdtool("cat", f"{image}:/data")
    assert got.returncode == 0, got.stderr
    return [int(line.split()[1]) for line in got.stdout.splitlines()]


def assert_continuous(ticks: list[int]) -> None:
    assert ticks and ticks[0] == 1
    assert ticks == list(range(1, len(ticks) + 1)), f"gap or repeat in {ticks}"


def free_port_pair() -> int:
    """A loopback port P with P+1 free too (the destination serves its disks there)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no free pair of loopback ports")


@pytest.fixture
def ticker(env: Env) -> tuple[Path, int]:
    """A differencing image over the ticking guest's disk, and its size."""
    base = build_root_image(env, "ticker", TICKER)
    child = env.tmp / "source.vhd"
    vhdtool.create(child, parent=base)
    with vhdtool.open(child) as dev:
        return child, dev.size


@pytest.mark.boot
def test_a_ticking_guest_moves_twice_over_unix_and_tcp_and_its_last_disk_holds_every_tick(
    env: Env, guest: Guest, ticker: tuple[Path, int]
) -> None:
    image, size = ticker
    data = env.tmp / "data.raw"
    data.write_bytes(os.urandom(3 << 20) + bytes(2 << 20) + os.urandom(1 << 20))
    data_vhd = env.tmp / "data.vhd"
    assert env.vhdtool("convert", data, data_vhd).returncode == 0
    with vhdtool.open(data_vhd) as dev:
        data_size = dev.size
    runners: list[Runner] = []
    try:
        source = Runner(env, "src", image, data_vhd, *env.boot_args(guest), "-m", "256M")
        runners.append(source)
        source.wait_ticking_past(3)
        first, first_image = incoming(env, guest, "first", size, f"unix:{env.tmp}/m.sock", data_size=data_size)
        runners.append(first)
        moved = env.vhdtool("migrate", "src", "--to", f"unix:{env.tmp}/m.sock", "--json")
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        assert report["name"] == "src" and report["to"] == f"unix:{env.tmp}/m.sock"
        assert [d["id"] for d in report["disks"]] == ["vda", "vdb"]
        assert report["disks"][0]["bytes"] >= size and report["disks"][1]["bytes"] >= data_size
        assert report["transferred_bytes"] == report["ram_bytes"] + sum(d["bytes"] for d in report["disks"])
        assert report["ram_bytes"] > 0 and 0 <= report["downtime_ms"] <= report["total_ms"]
        assert 0 <= report["switch_over_ms"] <= report["total_ms"]
        assert source.exit_code() == 0 and "guest migrated away" in source.text()
        left_at = console_ticks(source)[-1]
        first.wait_ticking_past(left_at)
        assert "migration arrived" in first.text()
        assert not (env.tmp / "m.sock.nbd").exists()  # the destination stopped serving its disks to others
        listed = json.loads(env.vhdtool("ps", "--json").stdout)
        assert [g["name"] for g in listed] == ["first"] and listed[0]["incoming"] == f"unix:{env.tmp}/m.sock"
        assert console_ticks(first)[0] in (left_at + 1, left_at + 2)  # +2: tick left_at+1 was split

        port = free_port_pair()
        second, second_image = incoming(env, guest, "second", size, f"tcp:127.0.0.1:{port}", data_size=data_size)
        runners.append(second)
        again = move(env, first, second, f"tcp:127.0.0.1:{port}")
        assert re.match(rf"first: moved to tcp:127.0.0.1:{port} in [\d.]+ s, downtime \d+ ms", again.stdout)
        second.stop()
    finally:
        for runner in runners:
            runner.stop()
    assert_continuous(console_ticks(source, first, second))  # the guest counted on, never twice
    assert env.vhdtool("check", second_image).returncode == 0
    for moved_data in (env.tmp / "first-data.vhd", env.tmp / "second-data.vhd"):
        assert env.vhdtool("compare", data, moved_data).returncode == 0
    final = ticks_on(env, second_image)
    assert_continuous(final)
    # each disk left behind holds a prefix of it: no side wrote after the next one took over
    for left_behind in (image, first_image):
        earlier = ticks_on(env, left_behind)
        assert earlier == final[: len(earlier)] and len(earlier) < len(final)
    env.assert_nothing_left()
    assert sorted(p.name for p in env.tmp.glob("m.sock*")) == []


def migrate_in_background(env: Env, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = env.tmp / "migrate.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([*VHDTOOL, "migrate", *args], env=env.vars, stdout=subprocess.DEVNULL, stderr=f)
    return proc, err


def wait_in_file(path: Path, text: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while text not in path.read_text():
        assert proc.poll() is None, f"migrate exited {proc.returncode}: {path.read_text()}"
        assert time.monotonic() < end, f"no {text!r} within {seconds} s: {path.read_text()}"
        time.sleep(0.05)


@pytest.mark.boot
def test_a_migration_failing_at_each_phase_leaves_the_guest_running_here_with_no_tick_lost(
    env: Env, guest: Guest, ticker: tuple[Path, int]
) -> None:
    image, size = ticker
    address = f"unix:{env.tmp}/m.sock"
    runners: list[Runner] = []
    try:
        source = Runner(env, "src", image, *env.boot_args(guest), "-m", "256M", "--agent")
        runners.append(source)
        source.wait_ticking_past(3)

        def still_running_here(dest: Runner, failed: subprocess.CompletedProcess[str] | str, code: int = 1) -> None:
            stderr = failed if isinstance(failed, str) else failed.stderr
            assert "src still runs here" in stderr and "Traceback" not in stderr
            assert dest.exit_code() == 1 and "the guest did not start here" in dest.text()
            assert not (env.tmp / "m.sock").exists() and not (env.tmp / "m.sock.nbd").exists()
            source.wait_ticking_past(source.last_tick() + 2)
            assert "migrated away" not in source.text()

        # mirror: the destination's image is of another size
        dest, _ = incoming(env, guest, "small", size // 2, address, "--agent")
        runners.append(dest)
        failed = env.vhdtool("migrate", "src", "--to", address)
        assert failed.returncode == 1 and f"destination's image holds {size // 2} bytes" in failed.stderr
        still_running_here(dest, failed)

        # RAM copy: Ctrl-C while it runs, slowed down so that there is time to press it
        dest, _ = incoming(env, guest, "interrupted", size, address, "--agent")
        runners.append(dest)
        proc, err = migrate_in_background(env, "src", "--to", address, "--bandwidth", "4M")
        wait_in_file(err, "copying RAM", proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        still_running_here(dest, err.read_text())

        # the destination killed while the RAM is copied
        dest, _ = incoming(env, guest, "killed", size, address, "--agent")
        runners.append(dest)
        proc, err = migrate_in_background(env, "src", "--to", address, "--bandwidth", "4M")
        wait_in_file(err, "copying RAM", proc)
        time.sleep(0.5)
        dest.proc.kill()
        assert proc.wait(60) == 1 and "src still runs here" in err.read_text()
        source.wait_ticking_past(source.last_tick() + 2)

        # switch-over: the destination lacks the agent's channel, a device whose state it cannot take
        dest, _ = incoming(env, guest, "unlike", size, address)
        runners.append(dest)
        failed = env.vhdtool("migrate", "src", "--to", address)
        assert failed.returncode == 1 and "switch-over" in failed.stderr, failed.stderr
        assert "runs here again" in failed.stderr
        assert dest.exit_code() == 1
        source.wait_ticking_past(source.last_tick() + 2)

        # and then the guest still moves, every tick with it
        dest, final_image = incoming(env, guest, "final", size, address, "--agent")
        runners.append(dest)
        move(env, source, dest, address)
        dest.stop()
    finally:
        for runner in runners:
            runner.stop()
    final = ticks_on(env, final_image)
    assert_continuous(final)
    earlier = ticks_on(env, image)
    assert earlier == final[: len(earlier)]
    env.assert_nothing_left()


def test_bad_addresses_and_guests_are_usage_errors(env: Env, tmp_path: Path) -> None:
    for args, message in [
        (["migrate", "nosuch", "--to", f"unix:{tmp_path}/m.sock"], "no running guest named 'nosuch'"),
        (["migrate", "nosuch", "--to", "ftp:host"], "give unix:PATH or tcp:HOST:PORT"),
        (["migrate", "nosuch", "--to", "tcp:host:65535"], "PORT from 1 to 65534"),
        (["run", "x.vhd", "--incoming", "tcp:nohost"], "give tcp:HOST:PORT"),
    ]:
        if args[0] == "run":
            vhdtool.create(tmp_path / "x.vhd", size="16M")
            args[1] = str(tmp_path / "x.vhd")
        got = env.vhdtool(*args)
        assert got.returncode == 64, got.stderr
        assert got.stderr.startswith("vhdtool: error: ") and message in got.stderr and "Traceback" not in got.stderr
