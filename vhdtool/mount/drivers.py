"""Mounting a filesystem that lives in a raw-view file: the kernel over a loop device, or the
filesystem's own FUSE program (fuse2fs, fusefat, ntfs-3g). vhdtool never implements one.

``choose`` picks the route: the kernel where running as root and the kernel has the filesystem
(faster, and the reference implementation), else the FUSE program. FAT12/FAT16 are refused
read-write without the kernel: measured here, ``fusefat -o rw+`` corrupted a FAT16 volume (mtools
could no longer read it), while it wrote FAT32 correctly.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from vhdtool.disk.detect import Filesystem
from vhdtool.errors import UsageError, VhdError
from vhdtool.mount import loop, system

KERNEL_TYPES = {"ext2": "ext2", "ext3": "ext3", "ext4": "ext4", "vfat": "vfat", "ntfs": "ntfs3"}
FUSE_PROGRAMS = {"ext2": "fuse2fs", "ext3": "fuse2fs", "ext4": "fuse2fs", "vfat": "fusefat", "ntfs": "ntfs-3g"}
DRIVERS = ("kernel", "fuse")
READY_TIMEOUT = 60.0
"""Seconds a FUSE program may take to show its mount (ntfs-3g reads the MFT first)."""


@dataclass(frozen=True, slots=True)
class Route:
    """How one filesystem gets mounted: ``kind`` kernel or fuse; ``program`` the FUSE program."""

    kind: str
    fstype: str
    """The kernel's name for it (mount -t), or the detected type for a FUSE program."""
    program: str | None = None

    @property
    def name(self) -> str:
        return self.program or "kernel"


def kernel_filesystems() -> set[str]:
    try:
        return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def _kernel_refusal(fs: Filesystem) -> str | None:
    """Why the kernel cannot mount ``fs`` here, or None when it can."""
    if os.geteuid() != 0:
        return "kernel mounts need root"
    kernel_type = KERNEL_TYPES.get(fs.type)
    if kernel_type is None or kernel_type not in kernel_filesystems():
        return f"this kernel has no {kernel_type or fs.type} driver (/proc/filesystems)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    return None


def _fuse_refusal(fs: Filesystem, read_only: bool) -> str | None:
    program = FUSE_PROGRAMS.get(fs.type)
    if program is None:
        return f"no FUSE program for {fs.type}"
    if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/sbin:/usr/bin") is None:
        return f"{program} is not installed"
    if program == "fusefat" and fs.variant != "fat32" and not read_only:
        return (
            f"fusefat corrupts {fs.variant.upper()} volumes when writing; mount with --read-only, or change "
            "files with 'vhdtool cp/rm/mkdir' (mtools)"
        )
    return None


def choose(fs: Filesystem, requested: str | None, read_only: bool) -> Route:
    """The route for ``fs``: ``requested`` (kernel or fuse) or the best one available."""
    if requested not in (None, *DRIVERS):
        raise UsageError(f"unknown driver {requested!r} (choose kernel or fuse)")
    kernel_no = _kernel_refusal(fs) if requested != "fuse" else "not asked for"
    if kernel_no is None:
        return Route("kernel", KERNEL_TYPES[fs.type])
    if requested == "kernel":
        raise UsageError(f"cannot mount {fs.variant} with the kernel: {kernel_no}")
    fuse_no = _fuse_refusal(fs, read_only)
    if fuse_no is None:
        return Route("fuse", fs.type, FUSE_PROGRAMS[fs.type])
    if requested == "fuse":
        raise UsageError(f"cannot mount {fs.variant} with FUSE: {fuse_no}")
    raise UsageError(f"cannot mount {fs.variant} here: {kernel_no}; and {fuse_no}")


class Attached(ABC):
    """A filesystem mounted at ``mountpoint`` from a raw-view file."""

    mountpoint: str
    loop: str | None = None
    helper: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def gone(self) -> bool:
        """True once the filesystem is no longer mounted (whoever unmounted it)."""

    @abstractmethod
    def detach(self, lazy: bool = False) -> None:
        """Unmount (if still mounted) and wait until nothing holds the raw-view file any more."""


class KernelMount(Attached):
    def __init__(self, source: str, mountpoint: str, route: Route, read_only: bool) -> None:
        self.mountpoint = mountpoint
        self.loop, fd = loop.attach(source, read_only)
        try:
            # an image is foreign data: no set-uid programs or device nodes from it (FUSE mounts do the same)
            options = ["ro" if read_only else "rw", "nosuid", "nodev"]
            if read_only and route.fstype in ("ext3", "ext4"):
                options.append("noload")  # a journal needing recovery cannot be replayed onto a read-only device
            done = subprocess.run(
                ["mount", "-t", route.fstype, "-o", ",".join(options), self.loop, mountpoint],
                capture_output=True,
                text=True,
            )
        finally:
            os.close(fd)  # autoclear: the mount now holds the device, or nothing does
        if done.returncode:
            said = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip() and "dmesg" not in line)
            raise VhdError(f"{mountpoint}: kernel mount of {route.fstype} failed: {said or 'no reason given'}")

    def gone(self) -> bool:
        m = system.mounted_at(self.mountpoint)
        return m is None or m.source != self.loop

    def detach(self, lazy: bool = False) -> None:
        if not self.gone():
            system.unmount(self.mountpoint, lazy=lazy)
        assert self.loop is not None
        device = self.loop
        # the loop device lets go of the raw-view file when the filesystem has been released
        system.wait_until(lambda: loop.backing_file(device) is None, 10.0)


class FuseMount(Attached):
    """A FUSE program (fuse2fs, fusefat, ntfs-3g) serving the filesystem, in the foreground."""

    def __init__(self, source: str, mountpoint: str, route: Route, read_only: bool) -> None:
        assert route.program is not None
        self.mountpoint = mountpoint
        self.program = route.program
        self._tail: collections.deque[str] = collections.deque(maxlen=5)
        self._drained = threading.Event()
        self.helper = subprocess.Popen(
            _command(route.program, source, mountpoint, read_only),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not system.wait_until(lambda: self._shown() or self.helper.poll() is not None, READY_TIMEOUT):
            self._kill()
            raise VhdError(f"{mountpoint}: {self.program} did not mount within {READY_TIMEOUT:.0f} s")
        if not self._shown():
            self.helper.wait()
            self._drained.wait(1.0)
            last = self._tail[-1] if self._tail else f"exit status {self.helper.returncode}"
            raise VhdError(f"{mountpoint}: {self.program} failed: {last}")

    def _drain(self) -> None:
        """Keep the program's output flowing (a full pipe would stall it); remember the last lines."""
        assert self.helper is not None and self.helper.stdout is not None
        for raw in self.helper.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                self._tail.append(line)
        self._drained.set()

    def _shown(self) -> bool:
        m = system.mounted_at(self.mountpoint)
        return m is not None and system.is_fuse(m)

    def gone(self) -> bool:
        assert self.helper is not None
        return self.helper.poll() is not None or not self._shown()

    def detach(self, lazy: bool = False) -> None:
        assert self.helper is not None
        if self._shown():
            system.unmount(self.mountpoint, lazy=lazy)
        # the program writes its last changes after the unmount: wait for it before the raw view goes
        try:
            self.helper.wait(timeout=READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill()

    def _kill(self) -> None:
        assert self.helper is not None
        with contextlib.suppress(ProcessLookupError):
            self.helper.terminate()
        try:
            self.helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()


def _command(program: str, source: str, mountpoint: str, read_only: bool) -> list[str]:
    if program == "fuse2fs":
        return [program, source, mountpoint, "-f", *(["-o", "ro"] if read_only else [])]
    if program == "fusefat":
        return [program, "-f", "-o", "ro" if read_only else "rw+", source, mountpoint]
    if program == "ntfs-3g":
        return [program, "-o", "no_detach" + (",ro" if read_only else ""), source, mountpoint]
    raise UsageError(f"unknown FUSE program {program}")


def attach(source: str, mountpoint: str, route: Route, read_only: bool) -> Attached:
    if route.kind == "kernel":
        return KernelMount(source, mountpoint, route, read_only)
    return FuseMount(source, mountpoint, route, read_only)
