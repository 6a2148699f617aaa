"""Reading filesystems with their own tools, no vhdtool involved: the oracles of the mount tests.

An image is turned into a raw file by qemu-img (or, for a differencing chain, which qemu's vpc
driver reads without its parent, by ``vhdtool convert``); a partition is cut out of it with
plain file copies; then debugfs/e2fsck, mtools/fsck.fat or ntfsls/ntfscat/ntfsfix read it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import need, run

TOOL_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}


def to_raw(image: Path, out: Path) -> Path:
    run(need("qemu-img"), "convert", "-f", "vpc", "-O", "raw", image, out)
    return out


def cut(raw: Path, start: int, size: int, out: Path) -> Path:
    """Bytes [start, start + size) of ``raw`` as a file of their own (a partition)."""
    with open(raw, "rb") as src, open(out, "wb") as dst:
        src.seek(start)
        left = size
        while left:
            chunk = src.read(min(left, 1 << 20))
            assert chunk, f"{raw} ends before {start + size}"
            dst.write(chunk)
            left -= len(chunk)
    return out


def _tool(*cmd: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.fspath(c) for c in cmd], capture_output=True, env=TOOL_ENV)


def cat(fs: str, volume: Path, path: str) -> bytes | None:
    """The file's bytes, or None when the filesystem's own tool does not find it."""
    if fs == "ext4":
        done = _tool(need("debugfs"), "-R", f"cat {path}", volume)
        return None if b"not found" in done.stderr else done.stdout
    if fs.startswith("fat"):
        done = _tool(need("mtype"), "-i", volume, f"::{path}")
    else:
        done = _tool(need("ntfscat"), volume, path)
    return done.stdout if done.returncode == 0 else None


def names(fs: str, volume: Path, folder: str = "/") -> set[str]:
    """The names in a folder (without . and ..), as the filesystem's own tool lists them."""
    if fs == "ext4":
        out = _tool(need("debugfs"), "-R", f"ls -p {folder}", volume).stdout.decode()
        found = {line.split("/")[5] for line in out.splitlines() if line.startswith("/")}
    elif fs.startswith("fat"):
        out = _tool(need("mdir"), "-b", "-i", volume, f"::{folder}").stdout.decode()
        found = {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.startswith("::")}
    else:
        out = _tool(need("ntfsls"), "-p", folder, volume).stdout.decode()
        found = {line.strip() for line in out.splitlines() if line.strip()}
    return found - {".", ".."}


def fsck_clean(fs: str, volume: Path) -> tuple[bool, str]:
    """(clean, the checker's output) from e2fsck -fn, fsck.fat -n or ntfsfix -n."""
    if fs == "ext4":
        done = _tool(need("e2fsck"), "-fn", volume)
    elif fs.startswith("fat"):
        done = _tool(need("fsck.fat"), "-n", volume)
    else:
        done = _tool(need("ntfsfix"), "-n", volume)
    return done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
