"""Shared helpers for the tests: running the real peers and patching images on disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vhdtool.format.structs import FOOTER_CHECKSUM_AT, HEADER_CHECKSUM_AT, vhd_checksum

VHDTOOL = [sys.executable, "-m", "vhdtool"]


def digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a whole file: to show that a command changed no byte of it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_of(data: bytes) -> str:
    """SHA-256 of bytes a peer read back, to compare with ``digest`` of the file they came from."""
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate: Callable[[], bool], seconds: float = 60.0, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``seconds`` pass; its last answer, checked once more at the end."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM a process the test started, and SIGKILL it if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def need(tool: str) -> str:
    """The path of a peer tool; a missing peer is a failed setup, not a skipped test."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")
    assert path, f"{tool} is not installed: run fixtures/setup.sh"
    return path


def run(*cmd: str | os.PathLike[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(c) for c in cmd], check=check, capture_output=True, text=True, **kw)


def vhdtool(
    *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would; never raises on a non-zero exit."""
    return subprocess.run([*VHDTOOL, *map(os.fspath, args)], capture_output=True, text=True, cwd=cwd)


def flushes(tmp_path: Path, *args: str | os.PathLike[str], program: Sequence[str] = VHDTOOL) -> list[str]:
    """The fsyncs and renames a vhdtool command (or ``program``) makes, in order, as strace sees
    them: 'fsync FILE' (the file's name), 'rename', 'fsync-folder', and 'write-behind' for the
    writeback started as pieces are written (once for a run of them)."""
    log = tmp_path / "strace.log"
    calls = "trace=fsync,fdatasync,rename,renameat,renameat2,fadvise64"
    strace = [need("strace"), "-f", "-y", "-qq", "-o", log, "-e", calls]
    result = run(*strace, *program, *args, check=False)
    assert result.returncode == 0, result.stderr
    seen = []
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[1] if line[:1].isdigit() else line
        if call.startswith(("fsync(", "fdatasync(")):
            name = call[call.index("<") + 1 : call.index(">")]
            seen.append("fsync-folder" if Path(name).is_dir() else f"fsync {Path(name).name}")
        elif call.startswith("rename"):
            seen.append("rename")
        elif call.startswith("fadvise64(") and seen[-1:] != ["write-behind"]:
            seen.append("write-behind")
    return seen


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int | None = None) -> None:
    """A failed command printed one error line and no traceback."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip(), "no error message"
    errors = [line for line in result.stderr.splitlines() if line.startswith("vhdtool: error:")]
    assert len(errors) == 1, result.stderr


def qemu_img_size(path: str | os.PathLike[str]) -> int:
    out = run(need("qemu-img"), "info", "-f", "vpc", "--output=json", path).stdout
    return json.loads(out)["virtual-size"]


def vhdiinfo_size(path: str | os.PathLike[str]) -> int:
    out = run(need("vhdiinfo"), path).stdout
    for line in out.splitlines():
        if "Media size" in line:
            return int(line.split("(")[1].split()[0])
    raise AssertionError(f"vhdiinfo printed no media size: {out}")


def qemu_raw(path: str | os.PathLike[str], tmp: Path) -> bytes:
    """What qemu-img reads from a VHD (converted to raw)."""
    out = tmp / (Path(path).name + ".qemu.raw")
    run(need("qemu-img"), "convert", "-f", "vpc", "-O", "raw", path, out)
    return out.read_bytes()


def footer_offsets(path: str | os.PathLike[str]) -> list[int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offsets = [size - 512]
        if f.read(8) == b"conectix":
            offsets.append(0)
    return offsets


def patch_footer(
    path: str | os.PathLike[str],
    fix_checksum: bool = True,
    trailing_only: bool = False,
    **fields: bytes | int | tuple[int, ...],
) -> None:
    """Rewrite fields of both footers in place (of the one at the end only, with ``trailing_only``).
    Fields by byte offset name below."""
    layout = {
        "creator_application": (28, "4s"),
        "original_size": (40, ">Q"),
        "current_size": (48, ">Q"),
        "geometry": (56, ">HBB"),
        "disk_type": (60, ">I"),
        "checksum": (64, ">I"),
        "cookie": (0, "8s"),
        "features": (8, ">I"),
        "saved_state": (84, "B"),
        "data_offset": (16, ">Q"),
    }
    with open(path, "r+b") as f:
        for off in footer_offsets(path)[:1] if trailing_only else footer_offsets(path):
            f.seek(off)
            raw = bytearray(f.read(512))
            for name, value in fields.items():
                at, fmt = layout[name]
                packed = struct.pack(fmt, *value) if isinstance(value, tuple) else struct.pack(fmt, value)
                raw[at : at + len(packed)] = packed
            if fix_checksum and "checksum" not in fields:
                raw[64:68] = vhd_checksum(raw, FOOTER_CHECKSUM_AT).to_bytes(4, "big")
            f.seek(off)
            f.write(raw)


def header_offset(path: str | os.PathLike[str]) -> int:
    with open(path, "rb") as f:
        return struct.unpack(">Q", f.read(512)[16:24])[0]


def patch_header(path: str | os.PathLike[str], at: int, data: bytes, fix_checksum: bool = True) -> None:
    hdr = header_offset(path)
    with open(path, "r+b") as f:
        f.seek(hdr)
        raw = bytearray(f.read(1024))
        raw[at : at + len(data)] = data
        if fix_checksum:
            raw[36:40] = vhd_checksum(raw, HEADER_CHECKSUM_AT).to_bytes(4, "big")
        f.seek(hdr)
        f.write(raw)


def bat_entry_offset(path: str | os.PathLike[str], index: int) -> int:
    hdr = header_offset(path)
    with open(path, "rb") as f:
        f.seek(hdr + 16)
        return struct.unpack(">Q", f.read(8))[0] + 4 * index


def get_bat(path: str | os.PathLike[str], index: int) -> int:
    with open(path, "rb") as f:
        f.seek(bat_entry_offset(path, index))
        return struct.unpack(">I", f.read(4))[0]


def set_bat(path: str | os.PathLike[str], index: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(bat_entry_offset(path, index))
        f.write(struct.pack(">I", value))


def make_qemu_image(path: str | os.PathLike[str]) -> None:
    """A 64M dynamic VHD by qemu-img (size rounded up to 67125248) with 5 MiB at 1M and a sector at 40M."""
    run(need("qemu-img"), "create", "-q", "-f", "vpc", path, "64M")
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 1M 5M", "-c", "write -P 0xa5 40M 512", path)


@contextmanager
def qemu_monitor(folder: Path, *, paused: bool = False) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real QEMU with an empty machine (no guest) and its QMP socket; killed on the way out."""
    sock = str(folder / "qmp.sock")
    qemu = subprocess.Popen(
        [
            need("qemu-system-x86_64"),
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            *(["-S"] if paused else []),
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(sock).exists():
            assert qemu.poll() is None and time.monotonic() < deadline, "QEMU did not open its monitor"
            time.sleep(0.02)
        yield sock, qemu
    finally:
        qemu.kill()
        qemu.wait()
