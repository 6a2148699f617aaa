"""Guests under QEMU: run, migrate, ps."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import click

from vhdtool import render
from vhdtool.cli import options


@click.command(name="run")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kernel", type=click.Path(dir_okay=False), help="Boot this kernel directly (images: /dev/vda, ...).")
@click.option("--initrd", type=click.Path(dir_okay=False), help="Initramfs for --kernel.")
@click.option("--append", help="Kernel command line (default: console=ttyS0 root=/dev/vda rw panic=-1).")
@click.option("--memory", "-m", default="512M", show_default=True, help="Guest memory (512M, 2G; bare number: MiB).")
@click.option("--cpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto: KVM only with real hardware virtualisation, else TCG.")  # fmt: skip
@click.option("--snapshot", is_flag=True, help="Throw the guest's writes away at exit: the images stay as they are.")
@click.option("--expect", metavar="REGEX", help="Exit 0 once the console matches; 1 if the guest stops first.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop the guest after this long and exit 1.")
@click.option("--console", is_flag=True, help="Interactive serial console (Ctrl-] stops); default: output only.")
@click.option("--net", type=click.Choice(["none", "user"]), default="none", show_default=True, help="Guest network.")
@click.option("--qmp", type=click.Path(dir_okay=False), metavar="SOCKET", help="Put the QMP socket at this path.")
@click.option("--agent", is_flag=True, help="Add a virtio-serial channel for the QEMU guest agent.")
@click.option("--name", help="Guest name (default: the first image's file stem, made unique).")
@click.option("--incoming", metavar="unix:PATH|tcp:HOST:PORT",
              help="Wait for `vhdtool migrate` here instead of booting (disks on PATH.nbd or PORT+1).")  # fmt: skip
def run_command(
    images: tuple[str, ...],
    kernel: str | None,
    initrd: str | None,
    append: str | None,
    memory: str,
    cpus: int,
    accel: str,
    snapshot: bool,
    expect: str | None,
    timeout: float | None,
    console: bool,
    net: str,
    qmp: str | None,
    agent: bool,
    name: str | None,
    incoming: str | None,
) -> None:
    """Boot IMAGES under QEMU (q35, virtio disks served by vhdtool's NBD server), until the guest stops.

    Without --kernel the first image boots through its own bootloader (BIOS); with it, the
    kernel boots directly with the images as /dev/vda, /dev/vdb, ... (under TCG tsc_early_khz=
    is added to the command line). The serial console is streamed to standard output. Ctrl-C
    or SIGTERM stops the guest at once, as a power cut would (what it had not synced is lost),
    and flushes everything it wrote into the images. Running guests are listed by `vhdtool ps`.

    With --incoming the guest does not boot: it waits for `vhdtool migrate NAME --to ADDRESS`
    (same boot options and devices as the source; IMAGES of the source's sizes, new ones will
    do) and serves IMAGES for the copy of the source's disks at PATH.nbd (unix:PATH) or on
    PORT+1 (tcp:HOST:PORT) until the guest runs here.

    Exit codes: 0 the guest stopped by itself, migrated away or --expect matched; 1 no match
    before the guest stopped or --timeout passed, QEMU failed, or the incoming migration failed;
    64 bad input; 130/143 stopped by SIGINT/SIGTERM.
    """
    from vhdtool.run.runner import RunOptions, run

    options = RunOptions(
        images=list(images),
        kernel=kernel,
        initrd=initrd,
        append=append,
        memory=memory,
        cpus=cpus,
        accel=accel,
        snapshot=snapshot,
        expect=expect,
        timeout=timeout,
        console=console,
        net=net,
        qmp=qmp,
        agent=agent,
        name=name,
        incoming=incoming,
    )
    sys.exit(run(options))


@click.command(name="migrate")
@click.argument("name")
@click.option("--to", "to", required=True, metavar="unix:PATH|tcp:HOST:PORT",
              help="The destination: a `vhdtool run --incoming` waiting there.")  # fmt: skip
@click.option("--bandwidth", metavar="RATE", help="Cap the copy at RATE bytes per second (100M, 1G; default: none).")
@options.QUIET
@options.JSON
def migrate_command(name: str, to: str, bandwidth: str | None, quiet: bool, as_json: bool) -> None:
    """Move the running guest NAME to a destination runner, its disks with it, while it runs.

    Every disk is copied into the destination's images while the guest runs (QEMU's
    blockdev-mirror; once in sync every write reaches both), then RAM and device state follow
    (QEMU's migration); at the switch-over the guest stops here, the last writes reach the
    destination, and it starts there. The source runner then exits, its images closed.

    On any failure, Ctrl-C or SIGTERM before the switch-over the migration is cancelled: NAME
    keeps running here, the destination runner is stopped (exit 1) and its images are left as the
    copy reached them, partly filled: use them again for the next try, or delete them.
    Exit codes: 0 moved; 1 failed, NAME still runs here; 64 bad input; 130/143 interrupted.
    """
    from vhdtool.run.migrate import migrate

    with contextlib.ExitStack() as stack:
        bars: dict[str, Callable[[int, int], None]] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                stack.close()
                bars.clear()
                bars[phase] = stack.enter_context(options.progress(f"copying {phase}", not (quiet or as_json)))
            bars[phase](done, total)

        result = migrate(
            name,
            to,
            bandwidth=options.parse_size(bandwidth),
            progress=progress,
            say=lambda line: render.note(f"vhdtool: migrate: {line}"),
        )
    if as_json:
        render.print_json(result.as_json())
        return
    disks = ", ".join(f"{d.id} {render.human_size(d.bytes)}" for d in result.disks)
    render.line(
        f"{result.name}: moved to {result.to} in {result.total_ms / 1000:.2f} s, downtime {result.downtime_ms} ms; "
        f"sent {render.human_size(result.transferred_bytes)} (RAM {render.human_size(result.ram_bytes)}, {disks})"
    )


@click.command(name="ps")
@options.JSON
def ps_command(as_json: bool) -> None:
    """List the guests `vhdtool run` is running: name, pid, accelerator, uptime, sockets, disks."""
    from vhdtool.run.listing import running_guests

    guests = running_guests()
    if as_json:
        render.print_json(guests)
        return
    if not guests:
        from vhdtool.run.state import state_dir

        render.note(f"no running guests in {state_dir()}")
        return
    render.table(
        ["name", "pid", "accel", "up", "disks", "QMP", "agent"],
        [
            [
                g["name"],
                str(g["pid"]),
                g["accel"],
                f"{g['uptime']:.0f}s",
                "\n".join(f"{d['id']}: {d['active']}" for d in g["disks"]),
                g["qmp"],
                g["agent"] or "-",
            ]
            for g in guests
        ],
    )
