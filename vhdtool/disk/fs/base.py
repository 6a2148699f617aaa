"""What every filesystem driver offers, and the one way drivers run the filesystems' own tools.

A driver is a thin adapter over a filesystem's own tools (e2fsprogs, mtools, ntfs-3g): vhdtool
never writes filesystem structures itself. Drivers work on a ``Volume``: a raw file (a sparse
temporary extract of a partition, or a filesystem being built) and where the volume starts in it.
Paths inside a volume are absolute POSIX paths (``/etc/app.conf``).
"""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from vhdtool.disk.fs.tree import Tree
from vhdtool.errors import UsageError, VhdError


class ToolError(VhdError):
    """A filesystem tool failed; the message carries its last line of complaint."""


class NoSpaceError(UsageError):
    """The files do not fit in the filesystem."""


def host_full(path: str) -> bool:
    """Whether the filesystem holding ``path`` (a volume file a tool writes) has no room left: then a
    tool's "no space" is the host's, not the filesystem's being made."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < HOST_FULL_MARGIN


HOST_FULL_MARGIN = 1 << 20


class FsPathError(VhdError):
    """A path inside the image does not exist or has the wrong type."""


@dataclass(frozen=True, slots=True)
class Volume:
    """A filesystem in a raw file: bytes [offset, offset + size) of ``path``."""

    path: str
    size: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry as a driver reports it; ``kind`` is file, dir, symlink or other."""

    name: str
    kind: str
    size: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None


@dataclass(frozen=True, slots=True)
class MakeOptions:
    """How to make a filesystem for ``build``."""

    label: str | None = None
    uuid: str | None = None
    """Filesystem UUID (ext), volume id (FAT: 8 hex digits) or serial (NTFS: 16 hex digits)."""
    owner: tuple[int, int] | None = None
    """Give every file this uid:gid instead of the source's."""
    epoch: int | None = None
    """SOURCE_DATE_EPOCH for reproducible output: creation times fixed, file times clamped."""
    hidden_sectors: int = 0
    """Partition start in sectors, recorded in FAT/NTFS boot sectors for booting."""
    fs_variant: str | None = None
    """ext2/ext3/ext4 for the ext driver."""


TOOL_ENV = {"LC_ALL": "C.UTF-8", "MTOOLS_SKIP_CHECK": "1", "E2FSPROGS_SKIP_PROGRESS": "1"}


def run_tool(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | BinaryIO | None = subprocess.PIPE,
    input: bytes | None = None,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a filesystem tool; on failure raise ToolError with its last meaningful stderr line."""
    full_env = {**os.environ, **TOOL_ENV, **(env or {})}
    try:
        proc = subprocess.run(list(args), env=full_env, stdout=stdout, stderr=subprocess.PIPE, input=input, check=False)
    except FileNotFoundError:
        raise ToolError(f"{args[0]} is not installed (needed for {what or 'this filesystem'})") from None
    if check and proc.returncode != 0:
        complaint = last_line(proc.stderr)
        if is_no_space(complaint):
            raise NoSpaceError(f"not enough free space in the filesystem ({what or args[0]}: {complaint})")
        raise ToolError(f"{what or args[0]} failed: {complaint or f'exit {proc.returncode}'}")
    return proc


_NO_SPACE = ("could not allocate block", "could not allocate inode", "no space left", "disk full", "no free space")


def is_no_space(complaint: str) -> bool:
    """Whether a tool's complaint means the filesystem is full (each tool words it its own way)."""
    return any(s in complaint.lower() for s in _NO_SPACE)


def last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def normalize(path: str) -> str:
    """An absolute, normalized path inside a volume; '..' may not climb above the root."""
    parts: list[str] = []
    for part in PurePosixPath("/" + path.strip()).parts[1:]:
        if part == "..":
            if not parts:
                raise UsageError(f"path {path!r} climbs above the filesystem root")
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def parent_of(path: str) -> str:
    return str(PurePosixPath(path).parent)


def name_of(path: str) -> str:
    return PurePosixPath(path).name


class FsDriver(ABC):
    """Operations on one family of filesystems. Paths are normalized absolute paths; callers
    (vhdtool.ops.files) check existence and types first, so drivers see sensible requests."""

    types: tuple[str, ...]
    needs_offset_zero = False
    """True when the tools cannot address a volume at an offset inside a file."""

    @abstractmethod
    def estimate_size(self, tree: Tree) -> int:
        """A volume size that holds ``tree`` with headroom (the ``--size auto`` rule)."""

    @abstractmethod
    def make(self, vol: Volume, source: Path, tree: Tree, opts: MakeOptions) -> list[str]:
        """Make a filesystem on ``vol`` holding the contents of ``source``; returns warnings."""

    @abstractmethod
    def stat(self, vol: Volume, path: str) -> Entry | None:
        """The entry at ``path`` (name = its last component, '/' for the root), None if missing."""

    @abstractmethod
    def list(self, vol: Volume, path: str) -> list[Entry]:
        """Entries of the directory ``path`` (without . and ..)."""

    def stat_in_parent(self, vol: Volume, path: str) -> Entry | None:
        """stat for filesystems whose names match case-insensitively (FAT, NTFS): look the name
        up in the parent's listing, an exact match first."""
        if path == "/":
            return Entry("/", "dir", 0)
        parent = path.rsplit("/", 1)[0] or "/"
        try:
            siblings = self.list(vol, parent)
        except ToolError:
            return None
        wanted = name_of(path)
        exact = next((e for e in siblings if e.name == wanted), None)
        return exact or next((e for e in siblings if e.name.casefold() == wanted.casefold()), None)

    @abstractmethod
    def cat(self, vol: Volume, path: str, out: BinaryIO) -> None:
        """Write the contents of the file ``path`` to ``out``."""

    @abstractmethod
    def copy_out(self, vol: Volume, path: str, dest: Path) -> None:
        """Copy the file or folder ``path`` to the local ``dest`` (which does not exist)."""

    @abstractmethod
    def copy_in(self, vol: Volume, src: Path, path: str) -> list[str]:
        """Copy the local file or folder ``src`` to ``path`` (which does not exist; its parent does);
        returns warnings (things the filesystem cannot hold and that were skipped)."""

    @abstractmethod
    def mkdir(self, vol: Volume, path: str) -> None:
        """Make the folder ``path`` (its parent exists)."""

    @abstractmethod
    def remove(self, vol: Volume, path: str) -> None:
        """Remove the file, symlink or folder ``path`` with everything below it."""

    @abstractmethod
    def fsck(self, vol: Volume) -> str | None:
        """Check the volume read-only: None when clean, else the checker's complaint."""
