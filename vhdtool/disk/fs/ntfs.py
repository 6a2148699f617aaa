"""NTFS through ntfs-3g: ``mkntfs`` builds, ``ntfsls``/``ntfscat``/``ntfscp`` read and add files
without FUSE, and changes ntfs-3g's tools cannot make (folders, removal, whole trees) go through
an ``ntfs-3g`` FUSE mount of the temporary volume file.

ntfs-3g's tools take no offset into a file: volumes must start at offset 0 (vhdtool always hands
them the sparse extract of one partition). The FUSE daemon runs in the foreground
(``-o no_detach``) so that, after unmounting, waiting for it guarantees every write reached the
file before vhdtool reads it back. NTFS holds no POSIX owners or modes here (no user mapping).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vhdtool.disk.fs.base import Entry, FsDriver, MakeOptions, ToolError, UsageError, Volume, run_tool
from vhdtool.disk.fs.tree import Tree

MiB = 1 << 20
CLUSTER = 4096
HEADROOM = 0.10
MIN_SIZE = 8 * MiB
MOUNT_TIMEOUT = 20.0
_LINE = re.compile(r"^\s*(?P<size>\d+) \w{3} [ \d]\d \d\d:\d\d \d{4} (?P<name>.*)$")


class NtfsDriver(FsDriver):
    types = ("ntfs",)
    needs_offset_zero = True

    @staticmethod
    def _device(vol: Volume) -> str:
        if vol.offset:
            raise UsageError("ntfs-3g's tools cannot address a volume at an offset inside a file")
        return vol.path

    # -- building --------------------------------------------------------------------------

    def estimate_size(self, tree: Tree) -> int:
        data = (tree.blocks_4k + tree.dirs) * CLUSTER + tree.count * 1024  # one 1 KiB MFT record each
        size = data * (1 + HEADROOM) + 8 * MiB
        size += max(2 * MiB, size * 0.005) + 4 * MiB  # $LogFile grows with the volume, MFT zone
        return max(MIN_SIZE, math.ceil(size / MiB) * MiB)

    def make(self, vol: Volume, source: Path, tree: Tree, opts: MakeOptions) -> list[str]:
        if opts.epoch is not None:
            raise UsageError("NTFS builds cannot be reproducible: mkntfs has no fixed-time or fixed-id mode")
        if opts.owner is not None:
            raise UsageError("--owner does not apply to NTFS (ntfs-3g stores no POSIX owners without a user map)")
        args = ["mkntfs", "-q", "-F", "-Q", "-p", str(opts.hidden_sectors), "-H", "255", "-S", "63"]
        if opts.label:
            args += ["-L", opts.label]
        run_tool([*args, self._device(vol)], what="mkntfs")
        if opts.uuid:
            serial = opts.uuid.replace("-", "")
            if not re.fullmatch(r"[0-9a-fA-F]{1,16}", serial):
                raise UsageError(f"NTFS serial {opts.uuid!r} is not up to 16 hex digits")
            run_tool(["ntfslabel", f"--new-serial={serial}", self._device(vol)], what="ntfslabel")
        with self._mounted(vol) as mnt:
            return _copy_tree(source, mnt)

    # -- the FUSE route for changes the tools cannot make ------------------------------------

    @contextlib.contextmanager
    def _mounted(self, vol: Volume) -> Iterator[Path]:
        mnt = Path(tempfile.mkdtemp(prefix="vhdtool-ntfs-"))
        proc = subprocess.Popen(
            ["ntfs-3g", "-o", "no_detach,big_writes", self._device(vol), str(mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not os.path.ismount(mnt):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
                    raise ToolError(f"ntfs-3g could not mount the volume (FUSE needed): {err[-1] if err else ''}")
                if time.monotonic() > deadline:
                    raise ToolError("ntfs-3g did not mount the volume in time")
                time.sleep(0.02)
            yield mnt
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
            try:
                proc.wait(timeout=60)  # the daemon has written everything back once it exits
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
            with contextlib.suppress(OSError):
                mnt.rmdir()

    # -- reading (no FUSE) -----------------------------------------------------------------

    def _ls(self, vol: Volume, path: str) -> list[Entry]:
        proc = run_tool(["ntfsls", "-a", "-F", "-l", "-p", path, self._device(vol)], check=False)
        if proc.returncode != 0:
            raise ToolError(f"ntfsls {path}: {proc.stderr.decode(errors='replace').strip()}")
        entries = []
        for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            name = m["name"]
            kind = "dir" if name.endswith("/") else "file"
            name = name.rstrip("/")
            if name in (".", ".."):
                continue
            entries.append(Entry(name, kind, int(m["size"])))
        return entries

    def stat(self, vol: Volume, path: str) -> Entry | None:
        return self.stat_in_parent(vol, path)

    def list(self, vol: Volume, path: str) -> list[Entry]:
        return self._ls(vol, path)

    def cat(self, vol: Volume, path: str, out: BinaryIO) -> None:
        out.flush()
        run_tool(["ntfscat", self._device(vol), path], stdout=out, what="ntfscat")

    def copy_out(self, vol: Volume, path: str, dest: Path) -> None:
        entry = self.stat(vol, path)
        if entry is not None and entry.kind == "file":
            with open(dest, "wb") as f:
                self.cat(vol, path, f)
            return
        dest.mkdir()
        for e in self._ls(vol, path):
            self.copy_out(vol, f"{path.rstrip('/')}/{e.name}", dest / e.name)

    # -- writing ---------------------------------------------------------------------------

    def copy_in(self, vol: Volume, src: Path, path: str) -> list[str]:
        if src.is_file() and not src.is_symlink():
            run_tool(["ntfscp", "-f", self._device(vol), str(src), path], what="ntfscp")  # no FUSE needed
            return []
        with self._mounted(vol) as mnt:
            target = mnt / path.lstrip("/")
            if src.is_symlink():
                os.symlink(os.readlink(src), target)
                return []
            target.mkdir()
            return _copy_tree(src, target)

    def mkdir(self, vol: Volume, path: str) -> None:
        with self._mounted(vol) as mnt:
            (mnt / path.lstrip("/")).mkdir()

    def remove(self, vol: Volume, path: str) -> None:
        with self._mounted(vol) as mnt:
            target = mnt / path.lstrip("/")
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def fsck(self, vol: Volume) -> str | None:
        proc = run_tool(["ntfsfix", "-n", self._device(vol)], check=False)
        if proc.returncode == 0:
            return None
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        return f"ntfsfix exit {proc.returncode}: {text[-1] if text else ''}"


def _copy_tree(source: Path, dest: Path) -> list[str]:
    """Copy the contents of ``source`` into the existing folder ``dest`` (an ntfs-3g mount):
    symlinks stay symlinks, hard links stay links, modification times are kept."""
    warnings: list[str] = []
    linked: dict[tuple[int, int], Path] = {}
    dirs: list[tuple[Path, os.stat_result]] = []
    for folder, subdirs, files in os.walk(source):
        rel = Path(folder).relative_to(source)
        subdirs.sort()
        for name in [*sorted(subdirs), *sorted(files)]:
            local, target = Path(folder) / name, dest / rel / name
            st = local.lstat()
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(local), target)
            elif stat.S_ISDIR(st.st_mode):
                target.mkdir()
                dirs.append((target, st))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in linked:
                    os.link(linked[key], target)
                    continue
                shutil.copyfile(local, target)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
                linked[key] = target
            else:
                warnings.append(f"{local}: not a file, folder or symlink, skipped")
    for target, st in reversed(dirs):  # after their contents, which touch them
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    return warnings
