"""Other image formats (qcow2, vmdk, vhdx, vdi, qed) in and out of vhdtool, through qemu-img.

qemu's vpc driver reads a differencing VHD as if it had no parent, so a VHD is never handed to
qemu-img as a file: vhdtool serves the chain (flattened, read-only) on a private unix socket and
``qemu-img convert`` reads that. The other way round qemu-img reads the foreign image and writes
into a new VHD that vhdtool serves writable the same way, so vhdtool lays out the VHD itself.

Crash safety: the output is written to a temporary file beside the destination and renamed into
place when complete (as every convert); an interrupted run leaves no destination.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

from vhdtool.errors import NotVhdError, UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.layout import new_file_by_name
from vhdtool.ops.datapath import ProgressCallback
from vhdtool.ops.devices import FOREIGN_MAGIC

# Every convert, info and check uses the tables and probes of this module; only a run of qemu-img
# needs subprocess, tempfile, shutil and json, so the functions that run it import them.

FORMATS = ("qcow2", "vmdk", "vhdx", "vdi", "qed")
"""Formats qemu-img both reads and writes, that vhdtool passes through it."""

EXTENSIONS = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vhdx": "vhdx", ".vdi": "vdi", ".qed": "qed"}
REFUSED_EXTENSIONS = {
    ".avhdx": "a differencing VHDX (qemu-img cannot make one)",
    ".avhd": "a differencing VHD (use 'vhdtool create --parent')",
    ".qcow": "qcow version 1 (use .qcow2)",
    ".ova": "an OVA archive",
    ".ovf": "an OVF descriptor",
    ".hdd": "a Parallels disk",
}

PROBED = {"qcow2": "qcow2", "VHDX": "vhdx", "VMDK": "vmdk", "VMDK descriptor": "vmdk", "VDI": "vdi", "QED": "qed"}
"""The names ``devices.FOREIGN_MAGIC`` gives, as qemu-img's format names."""

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def format_of_extension(destination: str) -> str | None:
    """The foreign format a destination's extension names; a UsageError for one nobody makes here."""
    ext = os.path.splitext(destination)[1].lower()
    if ext in REFUSED_EXTENSIONS:
        raise UsageError(
            f"{destination}: {ext} names {REFUSED_EXTENSIONS[ext]}, which vhdtool cannot write "
            f"(choose -O vhd, raw, {', '.join(FORMATS)})"
        )
    return EXTENSIONS.get(ext)


def qemu_img() -> str:
    import shutil

    found = shutil.which("qemu-img")
    if found is None:
        raise VhdError("qemu-img is not installed: other formats go through it (Debian: apt install qemu-utils)")
    return found


def export(
    src: BlockDevice,
    destination: str,
    fmt: str,
    overwrite: bool,
    progress: ProgressCallback | None,
    *,
    sync: bool = False,
) -> None:
    """Write ``src`` (a whole chain, as vhdtool reads it) into ``destination`` in format ``fmt``
    (``sync``: as ``layout.write_new_file``)."""
    tool = qemu_img()
    with new_file_by_name(destination, overwrite, sync=sync) as tmp, _served(src, read_only=True) as uri:
        _run([tool, "convert", "-p", "-f", "raw", "-O", fmt, uri, tmp], src.size, progress)


def convert_with_qemu(
    source: str,
    source_format: str,
    destination: str,
    fmt: str,
    size: int,
    overwrite: bool,
    progress: ProgressCallback | None,
    *,
    sync: bool = False,
) -> None:
    """Neither side a VHD: qemu-img does it all."""
    tool = qemu_img()
    with new_file_by_name(destination, overwrite, sync=sync) as tmp:
        _run([tool, "convert", "-p", "-f", source_format, "-O", fmt, source, tmp], size, progress)


def _magic_name(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(0x44)
    except OSError:
        return None
    for offset, magic, name in FOREIGN_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def source_format(path: str) -> str | None:
    """qemu-img's name for a foreign image's format; None for a VHD, a raw disk or no image."""
    name = _magic_name(path)
    return None if name is None else PROBED.get(name)


def explain_not_vhd(path: str, error: NotVhdError) -> NotVhdError:
    """``error``, or one that names the other format ``path`` is in and how to make a VHD of it."""
    name = _magic_name(path)
    if name is None:
        return error
    return NotVhdError(f"{path}: this is a {name} file, not a VHD; 'vhdtool convert {path} OUT.vhd' makes a VHD of it")


def virtual_size(path: str, fmt: str) -> int:
    import json
    import subprocess

    tool = qemu_img()
    done = subprocess.run([tool, "info", "--output=json", "-f", fmt, path], capture_output=True, text=True)
    if done.returncode != 0:
        raise VhdError(f"{path}: qemu-img cannot read it as {fmt}: {_last_line(done.stderr)}")
    return int(json.loads(done.stdout)["virtual-size"])


def import_image(
    source: str,
    fmt: str,
    destination: str,
    size: int,
    disk_type: str,
    block_size: int | None,
    overwrite: bool,
    progress: ProgressCallback | None,
    *,
    sync: bool = False,
) -> None:
    """Make ``destination`` a new VHD of ``size`` holding what qemu-img reads from ``source``."""
    from vhdtool.format.chain import open_image
    from vhdtool.ops.create import create

    tool = qemu_img()
    with new_file_by_name(destination, overwrite, sync=sync) as tmp:
        create(tmp, size=size, type=disk_type, block_size=block_size)
        with open_image(tmp, writable=True, durable=False) as image, _served(image, read_only=False) as uri:
            # the new VHD reads as zeros already: qemu-img need only write the data
            _run([tool, "convert", "-p", "-n", "--target-is-zero", "-f", fmt, source, "-O", "raw", uri], size, progress)
            image.flush()


@contextlib.contextmanager
def _served(device: BlockDevice, read_only: bool) -> Iterator[str]:
    """``device`` exported on a private unix socket; yields the URI qemu-img opens."""
    import shutil
    import tempfile

    from vhdtool.nbd.server import NbdServer, ServerThread  # only this route needs the server

    folder = tempfile.mkdtemp(prefix="vhdtool-convert-")
    try:
        server = NbdServer()
        server.add_export("", device, read_only=read_only)
        with ServerThread(server) as thread:
            yield thread.start_unix(os.path.join(folder, "nbd.sock"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(cmd: list[str], total: int, progress: ProgressCallback | None) -> None:
    """Run qemu-img convert -p, turning its '(12.50/100%)' lines into progress(done, total)."""
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    report: Callable[[int, int], None] = progress or (lambda done, total: None)
    try:
        pending = b""
        while chunk := proc.stdout.read1(4096):
            pending += chunk
            found = _PROGRESS.findall(pending)
            if found:
                report(int(total * float(found[-1]) / 100), total)
                pending = pending[pending.rfind(b")") + 1 :]
        errors = proc.stderr.read().decode(errors="replace")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.wait() != 0:
        raise VhdError(f"qemu-img convert failed: {_last_line(errors)}")
    report(total, total)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
