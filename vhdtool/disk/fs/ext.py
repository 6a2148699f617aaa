"""ext2/ext3/ext4 through e2fsprogs: ``mke2fs -d`` builds, ``debugfs`` reads and writes, ``e2fsck`` checks.

debugfs addresses a volume inside a file as ``FILE?offset=N``. It reports errors on stderr but
exits 0, so every debugfs run here treats any stderr line after its version banner as a failure.
Paths go to debugfs double-quoted, with embedded quotes doubled (its request parser's rule).
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from vhdtool.disk.fs.base import (
    Entry,
    FsDriver,
    MakeOptions,
    NoSpaceError,
    ToolError,
    UsageError,
    Volume,
    host_full,
    is_no_space,
    name_of,
    parent_of,
    run_tool,
)
from vhdtool.disk.fs.tree import Tree, scan
from vhdtool.errors import VhdError

MiB = 1 << 20
BLOCK = 4096
INODE_SIZE = 256
INODE_RATIO = 16384
"""mke2fs's default bytes-per-inode for filesystems it calls "default" (not "small")."""
HEADROOM = 0.10
MIN_SIZE = 8 * MiB
_NO_SPACE = ("Could not allocate block", "No space left", "Could not allocate inode", "No free space")


def quote(path: str) -> str:
    """A path as one debugfs argument."""
    return '"' + path.replace('"', '""') + '"'


def journal_blocks(blocks: int) -> int:
    """mke2fs's default journal size (ext2fs_default_journal_size) for a filesystem of ``blocks`` 4 KiB blocks."""
    for limit, size in (
        (2048, 0),
        (32768, 1024),
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
    ):
        if blocks < limit:
            return size
    return 262144


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


class ExtDriver(FsDriver):
    types = ("ext2", "ext3", "ext4")

    # -- building --------------------------------------------------------------------------

    def estimate_size(self, tree: Tree) -> int:
        data = (tree.blocks_4k + tree.dirs + tree.long_symlinks) * BLOCK
        size = data * (1 + HEADROOM) + 16 * MiB
        for _ in range(4):  # overheads depend on the size: iterate to a fixed point
            inodes = max(size / INODE_RATIO, tree.count * 1.5 + 64)
            overhead = inodes * INODE_SIZE + journal_blocks(int(size // BLOCK)) * BLOCK + size * 0.01
            size = data * (1 + HEADROOM) + 16 * MiB + overhead
        return max(MIN_SIZE, math.ceil(size / MiB) * MiB)

    def make(self, vol: Volume, source: Path, tree: Tree, opts: MakeOptions) -> list[str]:
        variant = opts.fs_variant or "ext4"
        src_st = source.stat()
        root_owner = opts.owner or (src_st.st_uid, src_st.st_gid)
        ext_opts = [
            "lazy_itable_init=1",  # the unwritten inode tables read as zeros: keeps the image sparse
            "lazy_journal_init=1",
            f"root_owner={root_owner[0]}:{root_owner[1]}",
            "nodiscard",
        ]
        if vol.offset:
            ext_opts.append(f"offset={vol.offset}")
        args = ["mke2fs", "-q", "-F", "-t", variant, "-b", str(BLOCK), "-d", str(source)]
        needed_inodes = tree.count + 64
        if vol.size // INODE_RATIO < needed_inodes:
            args += ["-N", str(int(needed_inodes * 1.5))]
        if opts.label:
            if len(opts.label.encode()) > 16:
                raise UsageError(f"ext label {opts.label!r} is longer than 16 bytes")
            args += ["-L", opts.label]
        env = {}
        if opts.uuid:
            args += ["-U", opts.uuid]
            ext_opts.append(f"hash_seed={opts.uuid}")
        if opts.epoch is not None:
            env["E2FSPROGS_FAKE_TIME"] = str(opts.epoch)
        args += ["-E", ",".join(ext_opts), vol.path, f"{vol.size // 1024}k"]
        proc = run_tool(args, env=env, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            if host_full(vol.path):
                raise VhdError(
                    f"{os.path.dirname(os.path.abspath(vol.path))}: no space left on device (the host filesystem "
                    f"is full) while mke2fs wrote {vol.path}"
                )
            if any(s in err for s in _NO_SPACE):
                raise UsageError(f"{source} does not fit in a {vol.size}-byte {variant} filesystem")
            raise ToolError(f"mke2fs failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
        fixups = list(self._fixups(tree, opts))
        if fixups:
            self._debugfs(vol, fixups, writable=True, env=env)  # same fake clock: debugfs stamps s_wtime
        return []

    def _fixups(self, tree: Tree, opts: MakeOptions) -> Iterable[str]:
        """debugfs requests that mke2fs -d has no option for: owner reset, reproducible times."""
        targets = [("", tree.root.stat())] + [(rel, st) for rel, st in tree.entries]
        for rel, st in targets:
            path = quote("/" + rel)
            if opts.owner is not None and rel:
                yield f"sif {path} uid {opts.owner[0]}"
                yield f"sif {path} gid {opts.owner[1]}"
            if opts.epoch is not None:
                # tar --clamp-mtime's rule: keep older times, pull newer ones back to the epoch;
                # access and change times say when the build ran, so they become the epoch
                mtime = min(int(st.st_mtime), opts.epoch)
                yield f"sif {path} mtime @{mtime}"
                yield f"sif {path} atime @{opts.epoch}"
                yield f"sif {path} ctime @{opts.epoch}"

    # -- running debugfs -------------------------------------------------------------------

    @staticmethod
    def _spec(vol: Volume) -> str:
        return f"{vol.path}?offset={vol.offset}" if vol.offset else vol.path

    def _debugfs(
        self, vol: Volume, requests: list[str], writable: bool = False, env: dict[str, str] | None = None
    ) -> bytes:
        """Run requests in one debugfs; any complaint on stderr (beyond its banner) is an error."""
        # the script on stdin, not in a temporary file that a killed command would leave behind
        script = ("\n".join(requests) + "\n").encode()
        args = ["debugfs", *(["-w"] if writable else []), "-f", "-", self._spec(vol)]
        proc = run_tool(args, what="debugfs", env=env, input=script)
        complaints = [
            ln
            for ln in proc.stderr.decode("utf-8", errors="replace").splitlines()
            if ln.strip() and not ln.startswith("debugfs ")
        ]
        if complaints:
            if any(is_no_space(c) for c in complaints):
                raise NoSpaceError(f"not enough free space in the filesystem (debugfs: {complaints[0].strip()})")
            raise ToolError(f"debugfs: {complaints[0].strip()}")
        return proc.stdout or b""

    def _request(self, vol: Volume, request: str, out: BinaryIO | None = None) -> bytes:
        args = ["debugfs", "-R", request, self._spec(vol)]
        proc = run_tool(args, stdout=out if out is not None else -1, what="debugfs")
        complaints = [
            ln
            for ln in proc.stderr.decode("utf-8", errors="replace").splitlines()
            if ln.strip() and not ln.startswith("debugfs ")
        ]
        if complaints:
            raise ToolError(f"debugfs: {complaints[0].strip()}")
        return proc.stdout or b""

    # -- reading ---------------------------------------------------------------------------

    def _ls(self, vol: Volume, path: str) -> list[Entry]:
        raw = self._request(vol, f"ls -p {quote(path)}")
        entries = []
        for line in raw.decode("utf-8", errors="surrogateescape").splitlines():
            if not line.startswith("/"):
                continue
            _ino, mode, uid, gid, rest = line[1:].split("/", 4)
            name, size = rest[:-1].rsplit("/", 1) if rest.endswith("/") else rest.rsplit("/", 1)
            m = int(mode, 8)
            entries.append(Entry(name, _kind(m), int(size or 0), stat.S_IMODE(m), int(uid), int(gid)))
        return entries

    def stat(self, vol: Volume, path: str) -> Entry | None:
        if path == "/":
            self._ls(vol, "/")  # raises when the volume is unreadable
            return Entry("/", "dir", 0)
        try:
            siblings = self._ls(vol, parent_of(path))
        except ToolError:
            return None  # the parent is missing or not a folder
        return next((e for e in siblings if e.name == name_of(path)), None)

    def list(self, vol: Volume, path: str) -> list[Entry]:
        return [e for e in self._ls(vol, path) if e.name not in (".", "..")]

    def cat(self, vol: Volume, path: str, out: BinaryIO) -> None:
        out.flush()
        self._request(vol, f"cat {quote(path)}", out=out)

    def copy_out(self, vol: Volume, path: str, dest: Path) -> None:
        entry = self.stat(vol, path)
        if entry is not None and entry.kind != "dir":
            if entry.kind == "symlink":
                target = self._request(vol, f"cat {quote(path)}")  # fast symlinks: cat gives the target
                os.symlink(os.fsdecode(target), dest)
                return
            self._request(vol, f"dump -p {quote(path)} {quote(str(dest))}")
            return
        staging = Path(tempfile.mkdtemp(prefix=".vhdtool-", dir=dest.parent))
        try:
            self._request(vol, f"rdump {quote(path)} {quote(str(staging))}")
            got = staging if path == "/" else staging / name_of(path)
            got.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------

    def copy_in(self, vol: Volume, src: Path, path: str) -> list[str]:
        tree = scan(src)
        requests: list[str] = []
        if not src.is_dir() or src.is_symlink():
            requests += self._put(src, path, src.lstat())
        else:
            requests.append(f"mkdir {quote(path)}")
            requests.append(f"sif {quote(path)} mode 0{stat.S_IFDIR | stat.S_IMODE(src.stat().st_mode):o}")
            for rel, st in tree.entries:
                requests += self._put(src / rel, f"{path.rstrip('/')}/{rel}", st)
        self._debugfs(vol, requests, writable=True)
        return []

    @staticmethod
    def _put(local: Path, path: str, st: os.stat_result) -> list[str]:
        if stat.S_ISDIR(st.st_mode):
            return [f"mkdir {quote(path)}", f"sif {quote(path)} mode 0{stat.S_IFDIR | stat.S_IMODE(st.st_mode):o}"]
        if stat.S_ISLNK(st.st_mode):
            return [f"symlink {quote(path)} {quote(os.readlink(local))}"]
        if stat.S_ISREG(st.st_mode):
            return [f"write {quote(str(local))} {quote(path)}"]
        raise UsageError(f"{local}: only files, folders and symlinks can be copied into an image")

    def mkdir(self, vol: Volume, path: str) -> None:
        self._debugfs(vol, [f"mkdir {quote(path)}"], writable=True)

    def remove(self, vol: Volume, path: str) -> None:
        entry = self.stat(vol, path)
        requests: list[str] = []
        if entry is not None and entry.kind == "dir":
            self._collect_removal(vol, path, requests)
        else:
            requests.append(f"rm {quote(path)}")
        self._debugfs(vol, requests, writable=True)

    def _collect_removal(self, vol: Volume, path: str, requests: list[str]) -> None:
        """Children first, then the folder: debugfs removes only empty folders."""
        for e in self.list(vol, path):
            child = f"{path.rstrip('/')}/{e.name}"
            if e.kind == "dir":
                self._collect_removal(vol, child, requests)
            else:
                requests.append(f"rm {quote(child)}")
        requests.append(f"rmdir {quote(path)}")

    def fsck(self, vol: Volume) -> str | None:
        proc = run_tool(["e2fsck", "-fn", self._spec(vol)], check=False)
        if proc.returncode == 0:
            return None
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        return f"e2fsck exit {proc.returncode}: {text[-1] if text else ''}"
