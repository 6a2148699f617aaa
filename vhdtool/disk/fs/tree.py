"""A scan of a local folder: what ``build`` and ``cp`` need to know before calling a tool.

One walk with ``os.scandir`` (lstat only, symlinks not followed) gathers sizes and counts for
``--size auto``, the names for filesystem-specific checks (FAT), and the hard-link groups.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vhdtool.errors import UsageError


@dataclass(slots=True)
class Tree:
    """Totals of a folder (or a single file) and every entry's path relative to it."""

    root: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    """Sum of regular file sizes, each hard-linked inode counted once."""
    blocks_4k: int = 0
    """Sum of regular file sizes rounded up to 4 KiB, each inode once."""
    long_symlinks: int = 0
    """Symlinks whose target does not fit in the inode (ext: > 59 bytes) and so need a block."""
    entries: list[tuple[str, os.stat_result]] = field(default_factory=list)
    """(relative POSIX path, lstat) for every entry below the root, parents before children."""

    @property
    def count(self) -> int:
        return self.files + self.dirs + self.symlinks + self.others


def scan(root: str | os.PathLike[str]) -> Tree:
    """Walk ``root`` (a folder or a single file); refuse what cannot be read."""
    root = Path(root)
    try:
        st = root.lstat()
    except OSError as e:
        raise UsageError(f"{root}: {e.strerror}") from None
    tree = Tree(root)
    seen_inodes: set[tuple[int, int]] = set()

    def add(rel: str, st: os.stat_result) -> None:
        tree.entries.append((rel, st))
        if stat.S_ISDIR(st.st_mode):
            tree.dirs += 1
        elif stat.S_ISREG(st.st_mode):
            tree.files += 1
            key = (st.st_dev, st.st_ino)
            if key not in seen_inodes:
                seen_inodes.add(key)
                tree.bytes += st.st_size
                tree.blocks_4k += (st.st_size + 4095) // 4096
        elif stat.S_ISLNK(st.st_mode):
            tree.symlinks += 1
            if st.st_size > 59:
                tree.long_symlinks += 1
        else:
            tree.others += 1

    if not stat.S_ISDIR(st.st_mode):
        add(root.name, st)
        return tree

    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise UsageError(f"{folder}: cannot read: {e.strerror}") from None
        subdirs = []
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            cst = child.stat(follow_symlinks=False)
            add(child_rel, cst)
            if stat.S_ISDIR(cst.st_mode):
                subdirs.append((Path(child.path), child_rel))
        stack.extend(reversed(subdirs))
    return tree
