"""FAT12/16/32 through dosfstools and mtools: ``mkfs.fat`` builds, mtools reads and writes, ``fsck.fat`` checks.

mtools addresses a volume inside a file as ``-i FILE@@OFFSET`` and needs no configuration with
MTOOLS_SKIP_CHECK. Names go through mtools' long-name (VFAT) support under a UTF-8 locale.
FAT holds no owners, modes, symlinks or hard links: a symlink becomes a copy of its target (a
dangling one is skipped with a warning), a hard link a second copy. Recursion is done here, one
mdir per folder and one mcopy per file, because ``mcopy -s`` writes back some non-ASCII names with
the wrong case.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections import defaultdict
from pathlib import Path
from typing import BinaryIO

from vhdtool.disk.fs.base import Entry, FsDriver, MakeOptions, ToolError, UsageError, Volume, name_of, run_tool
from vhdtool.disk.fs.tree import Tree

MiB = 1 << 20
CLUSTER = 4096
FAT32_FROM = 260 * MiB
"""From this size on build FAT32 with 4 KiB clusters; below, mkfs.fat picks FAT12/16/32 itself."""
HEADROOM = 0.10
MIN_SIZE = 2 * MiB
BATCH = 200
"""Files per mcopy call: keeps argument lists short."""
_BAD_CHARS = set('"*/:<>?\\|') | {chr(c) for c in range(32)}
_LINE = re.compile(
    r"^(?P<short>.{8}) (?P<ext>.{3}) +(?P<size><DIR>|\d+) +(?P<date>\d{4}-\d\d-\d\d) +"
    r"(?P<time>\d{1,2}:\d\d)(?P<long>.*)$"
)


def check_name(name: str, where: str) -> None:
    """Refuse a name no FAT long-name entry can hold (the rules Windows applies)."""
    bad = sorted(set(name) & _BAD_CHARS)
    if bad:
        raise UsageError(f"{where}: FAT cannot hold the character(s) {''.join(bad)!r} in names")
    if name.endswith((".", " ")):
        raise UsageError(f"{where}: FAT names cannot end with a dot or a space")
    if len(name.encode("utf-16-le")) > 510:
        raise UsageError(f"{where}: name longer than FAT's 255 characters")


class FatDriver(FsDriver):
    types = ("vfat",)

    @staticmethod
    def _img(vol: Volume) -> list[str]:
        return ["-i", f"{vol.path}@@{vol.offset}" if vol.offset else vol.path]

    @staticmethod
    def _fat(path: str) -> str:
        return "::" + path

    # -- building --------------------------------------------------------------------------

    def estimate_size(self, tree: Tree) -> int:
        data = (tree.blocks_4k + tree.dirs + tree.symlinks) * CLUSTER
        size = data * (1 + HEADROOM) + 4 * MiB
        size += size / CLUSTER * 4 * 2  # two FATs of 4-byte entries
        return max(MIN_SIZE, math.ceil(size / MiB) * MiB)

    def make(self, vol: Volume, source: Path, tree: Tree, opts: MakeOptions) -> list[str]:
        self._check_names(tree)
        args = ["mkfs.fat", "-h", str(opts.hidden_sectors)]
        if vol.size >= FAT32_FROM:
            args += ["-F", "32", "-s", str(CLUSTER // 512)]
        if opts.label:
            check_name(opts.label, "label")
            if len(opts.label.encode("cp850", errors="replace")) > 11:
                raise UsageError(f"FAT label {opts.label!r} is longer than 11 characters")
            args += ["-n", opts.label.upper()]
        if opts.uuid:
            volid = opts.uuid.replace("-", "")
            if not re.fullmatch(r"[0-9a-fA-F]{1,8}", volid):
                raise UsageError(f"FAT volume id {opts.uuid!r} is not 8 hex digits (like 1234-ABCD)")
            args += ["-i", volid]
        if opts.epoch is not None:
            args.append("--invariant")  # no time-based values in the boot sector or label entry
        if vol.offset:
            args.append(f"--offset={vol.offset // 512}")
        args += [vol.path, str(vol.size // 1024)]
        run_tool(args, what="mkfs.fat")
        return self._populate(vol, source, "/", opts.epoch)

    @staticmethod
    def _check_names(tree: Tree) -> None:
        seen: dict[str, set[str]] = defaultdict(set)
        for rel, _ in tree.entries:
            parent, _, name = rel.rpartition("/")
            check_name(name, rel)
            folded = name.casefold()
            if folded in seen[parent]:
                raise UsageError(f"{rel}: FAT is case-insensitive and this folder already holds that name")
            seen[parent].add(folded)

    def _populate(self, vol: Volume, source: Path, dest: str, epoch: int | None) -> list[str]:
        """Copy the contents of the local folder ``source`` into the existing FAT folder ``dest``."""
        warnings: list[str] = []
        dirs: list[str] = []
        files: dict[str, list[tuple[Path, bool]]] = defaultdict(list)  # fat folder -> (local, keep mtime)
        visiting: set[str] = set()

        def walk(local: Path, fat_dir: str) -> None:
            real = os.path.realpath(local)
            if real in visiting:
                warnings.append(f"{local}: symlink loop, skipped")
                return
            visiting.add(real)
            for child in sorted(os.scandir(local), key=lambda e: e.name):
                target = f"{fat_dir.rstrip('/')}/{child.name}"
                check_name(child.name, child.path)
                try:
                    st = os.stat(child.path)  # follows symlinks: FAT stores what they point at
                except OSError:
                    warnings.append(f"{child.path}: dangling symlink skipped (FAT has no symlinks)")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(target)
                    walk(Path(child.path), target)
                elif stat.S_ISREG(st.st_mode):
                    files[fat_dir].append((Path(child.path), epoch is None or st.st_mtime <= epoch))
                else:
                    warnings.append(f"{child.path}: not a file or folder, skipped (FAT cannot hold it)")
            visiting.discard(real)

        walk(source, dest)
        env = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else None
        for i in range(0, len(dirs), BATCH):
            run_tool(["mmd", *self._img(vol), *(self._fat(d) for d in dirs[i : i + BATCH])], env=env, what="mmd")
        for fat_dir, items in files.items():
            for keep in (True, False):
                chosen = [str(p) for p, k in items if k == keep]
                for i in range(0, len(chosen), BATCH):
                    # -m keeps modification times; files newer than SOURCE_DATE_EPOCH get the epoch
                    args = ["mcopy", *self._img(vol), *(["-m"] if keep else []), "-D", "o", *chosen[i : i + BATCH]]
                    run_tool([*args, self._fat(fat_dir.rstrip("/") + "/")], env=env, what="mcopy")
        return warnings

    # -- reading ---------------------------------------------------------------------------

    def _mdir(self, vol: Volume, path: str) -> list[Entry]:
        proc = run_tool(["mdir", "-a", *self._img(vol), self._fat(path)], check=False)
        if proc.returncode != 0:
            raise ToolError(f"mdir {path}: {proc.stderr.decode(errors='replace').strip()}")
        entries = []
        for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            # after the time mtools prints one space, then one more and the long name if there is one
            long = m["long"][2:] if m["long"].startswith("  ") else ""
            short, ext = m["short"].rstrip(), m["ext"].rstrip()
            name = long.rstrip() or (f"{short}.{ext}" if ext else short)
            if name in (".", ".."):
                continue
            is_dir = m["size"] == "<DIR>"
            entries.append(Entry(name, "dir" if is_dir else "file", 0 if is_dir else int(m["size"])))
        return entries

    def stat(self, vol: Volume, path: str) -> Entry | None:
        return self.stat_in_parent(vol, path)

    def list(self, vol: Volume, path: str) -> list[Entry]:
        return self._mdir(vol, path)

    def cat(self, vol: Volume, path: str, out: BinaryIO) -> None:
        out.flush()
        run_tool(["mcopy", *self._img(vol), self._fat(path), "-"], stdout=out, what="mcopy")

    def copy_out(self, vol: Volume, path: str, dest: Path) -> None:
        entry = self.stat(vol, path)
        if entry is not None and entry.kind == "file":
            run_tool(["mcopy", "-m", "-n", *self._img(vol), self._fat(path), str(dest)], what="mcopy")
            return
        dest.mkdir()
        for e in self._mdir(vol, path):
            self.copy_out(vol, f"{path.rstrip('/')}/{e.name}", dest / e.name)

    # -- writing ---------------------------------------------------------------------------

    def copy_in(self, vol: Volume, src: Path, path: str) -> list[str]:
        check_name(name_of(path), path)
        if src.is_dir():
            run_tool(["mmd", *self._img(vol), self._fat(path)], what="mmd")
            return self._populate(vol, src, path, None)
        run_tool(["mcopy", *self._img(vol), "-m", "-D", "o", str(src), self._fat(path)], what="mcopy")
        return []

    def mkdir(self, vol: Volume, path: str) -> None:
        check_name(name_of(path), path)
        run_tool(["mmd", *self._img(vol), self._fat(path)], what="mmd")

    def remove(self, vol: Volume, path: str) -> None:
        entry = self.stat(vol, path)
        tool = "mdeltree" if entry is not None and entry.kind == "dir" else "mdel"
        run_tool([tool, *self._img(vol), self._fat(path)], what=tool)

    def fsck(self, vol: Volume) -> str | None:
        if vol.offset:
            raise UsageError("fsck.fat cannot check a volume at an offset inside a file")
        proc = run_tool(["fsck.fat", "-n", vol.path], check=False)
        if proc.returncode == 0:
            return None
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        return f"fsck.fat exit {proc.returncode}: {' / '.join(text[1:3])}"
