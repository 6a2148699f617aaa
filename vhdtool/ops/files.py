"""The file commands: ls, cat, cp, rm, mkdir on a filesystem inside an image, without root or FUSE.

Route (measured in bench/bench_build.py): the chosen partition is extracted to a sparse temporary
raw file (only allocated, non-zero pieces are copied), the filesystem's own tool works on it,
and for writes a read-only fsck must pass before only the changed 64 KiB grains are written back
into the top of the image's chain. Bad paths and failing tools therefore never touch the image.
The write-back goes into a copy of the image that replaces it in one rename (``shadow``), so an
interrupted command (Ctrl-C, kill -9, a power cut) leaves the old filesystem or the new one.
With ``undo=True`` writes go instead into the image's undo disk (``ops.overlay``: the one ``vhdtool
mount`` uses), created on first use and read through by later commands that pass it too.

ext and FAT need neither root nor FUSE. NTFS reads (and copying a single file in) use ntfs-3g's
tools; making folders, removing and copying trees in go through an ntfs-3g FUSE mount of the
temporary extract, since ntfs-3g ships no tool for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vhdtool.disk.detect import Filesystem
from vhdtool.disk.fs import driver_for
from vhdtool.disk.fs.base import Entry, FsDriver, FsPathError, Volume, name_of, normalize, parent_of
from vhdtool.disk.partitions import partition_view, read_table, select
from vhdtool.disk.table import Partition
from vhdtool.errors import UsageError, VhdError
from vhdtool.format.chain import open_image
from vhdtool.ops.datapath import ProgressCallback
from vhdtool.ops.extract import extract, write_back
from vhdtool.ops.growth import allocated_bytes, watched
from vhdtool.ops.overlay import create_overlay, undo_path
from vhdtool.ops.shadow import shadow_copy


@dataclass(frozen=True, slots=True)
class ImagePath:
    """``IMAGE:PATH`` as the user wrote it."""

    image: str
    path: str


def parse_image_path(text: str, require: bool = True) -> ImagePath | None:
    """Split ``IMAGE:PATH`` at the first colon whose left side is an existing file (image names may
    hold colons too). Without a colon and ``require``, the whole text is the image and PATH is '/'."""
    at = text.find(":")
    while at != -1:
        if os.path.isfile(text[:at]):
            return ImagePath(text[:at], normalize(text[at + 1 :] or "/"))
        at = text.find(":", at + 1)
    if require:
        if os.path.isfile(text):
            return ImagePath(text, "/")
        image = text.split(":", 1)[0]
        if os.path.isdir(image):
            raise UsageError(f"{image}: is a folder, not a disk image (write IMAGE:PATH, IMAGE a VHD file)")
        raise UsageError(f"{text}: no such image (write IMAGE:PATH)")
    return None


@dataclass(slots=True)
class Session:
    """An open image partition: its filesystem driver and a raw volume the tools work on."""

    driver: FsDriver
    volume: Volume
    partition: Partition
    filesystem: Filesystem
    written: int = 0


@contextlib.contextmanager
def open_volume(image: str, *, write: bool, partition: int | None = None, undo: bool = False) -> Iterator[Session]:
    """Extract the image's chosen partition; on a clean exit of a writing session, fsck and write back."""
    target, made_undo = image, False
    if undo:
        target = undo_path(image)
        if not os.path.exists(target):
            if write:
                create_overlay(image, target)
                made_undo = True
            else:
                target = image
    try:
        with open_image(target, writable=write) as img:
            part, fs = select(img, read_table(img), partition)
            driver = driver_for(fs.type)
            ex = extract(partition_view(img, part), track=write)
            try:
                session = Session(driver, Volume(ex.path, ex.size), part, fs)
                yield session
                if write:
                    complaint = driver.fsck(session.volume)
                    if complaint is not None:
                        raise VhdError(
                            f"{image}: the change left the filesystem inconsistent, not written: {complaint}"
                        )
                    with shadow_copy(target) as copy_path, open_image(copy_path, writable=True, durable=False) as copy:
                        session.written = write_back(ex, into=partition_view(copy, part))
            finally:
                ex.close()
    except BaseException:
        if made_undo:  # nothing reached it: leave no empty undo disk behind
            os.unlink(target)
        raise


def _need(driver: FsDriver, vol: Volume, image: str, path: str, kind: str | None = None) -> Entry:
    entry = driver.stat(vol, path)
    if entry is None:
        raise FsPathError(f"{image}:{path}: no such file or folder")
    if kind == "dir" and entry.kind != "dir":
        raise FsPathError(f"{image}:{path}: not a folder")
    if kind == "file" and entry.kind == "dir":
        raise FsPathError(f"{image}:{path}: is a folder")
    return entry


def ls(target: str, partition: int | None = None, undo: bool = False) -> tuple[str, list[Entry]]:
    """(the listed path, entries): a folder's entries, or the one entry of a file."""
    ip = parse_image_path(target)
    assert ip is not None
    with open_volume(ip.image, write=False, partition=partition, undo=undo) as s:
        entry = _need(s.driver, s.volume, ip.image, ip.path)
        if entry.kind != "dir":
            return ip.path, [entry]
        return ip.path, sorted(s.driver.list(s.volume, ip.path), key=lambda e: e.name)


def cat(target: str, out: BinaryIO, partition: int | None = None, undo: bool = False) -> None:
    ip = parse_image_path(target)
    assert ip is not None
    with open_volume(ip.image, write=False, partition=partition, undo=undo) as s:
        entry = _need(s.driver, s.volume, ip.image, ip.path, "file")
        if entry.kind != "file":
            raise FsPathError(f"{ip.image}:{ip.path}: is a {entry.kind}, not a file")
        s.driver.cat(s.volume, ip.path, out)


@dataclass(frozen=True, slots=True)
class Copied:
    source: str
    destination: str
    written: int
    """Bytes written back into the image (0 when copying out)."""
    warnings: list[str]


def cp(
    src: str, dst: str, partition: int | None = None, undo: bool = False, progress: ProgressCallback | None = None
) -> Copied:
    """Copy a file or folder into an image (DST is IMAGE:PATH) or out of one (SRC is IMAGE:PATH).

    ``progress(done, total)`` follows the bytes of the copied files as the filesystem tool writes
    them (a folder copied out: not reported, its size inside the image is not known up front)."""
    s_ip, d_ip = parse_image_path(src, require=False), parse_image_path(dst, require=False)
    if s_ip and d_ip:
        raise UsageError("copying between two images is not supported: copy out, then in")
    if d_ip is not None:
        return _copy_in(Path(src), d_ip, partition, undo, progress)
    if s_ip is not None:
        return _copy_out(s_ip, Path(dst), partition, undo, progress)
    raise UsageError("one side of cp must be IMAGE:PATH")


def _copy_in(
    src: Path, dst: ImagePath, partition: int | None, undo: bool, progress: ProgressCallback | None
) -> Copied:
    if not src.exists() and not src.is_symlink():
        raise UsageError(f"{src}: no such file or folder")
    with open_volume(dst.image, write=True, partition=partition, undo=undo) as s:
        path = dst.path
        entry = s.driver.stat(s.volume, path)
        if entry is not None and entry.kind == "dir":
            path = f"{path.rstrip('/')}/{src.name}"
            entry = s.driver.stat(s.volume, path)
        if entry is not None:
            if src.is_dir() or entry.kind == "dir":
                raise FsPathError(f"{dst.image}:{path}: exists (a {entry.kind}); remove it first")
            s.driver.remove(s.volume, path)  # a file replaces a file, as cp does
        else:
            _need(s.driver, s.volume, dst.image, parent_of(path), "dir")
        total = allocated_bytes(src)
        start = allocated_bytes(s.volume.path)  # the extract is sparse: the tool's writes grow it
        report = None if progress is None else (lambda done: progress(done, total))
        with watched(lambda: allocated_bytes(s.volume.path) - start, total, report):
            warnings = s.driver.copy_in(s.volume, src, path)
    return Copied(str(src), f"{dst.image}:{path}", s.written, warnings)


def _copy_out(
    src: ImagePath, dst: Path, partition: int | None, undo: bool, progress: ProgressCallback | None
) -> Copied:
    with open_volume(src.image, write=False, partition=partition, undo=undo) as s:
        entry = _need(s.driver, s.volume, src.image, src.path)
        if dst.is_dir():
            dst = dst / (name_of(src.path) or "root")
        if dst.exists() or dst.is_symlink():
            if dst.is_dir() or entry.kind == "dir":
                raise UsageError(f"{dst}: exists; remove it first")
            dst.unlink()
        elif not dst.parent.is_dir():
            raise UsageError(f"{dst.parent}: no such folder")
        total = entry.size if entry.kind == "file" else 0
        report = None if progress is None or not total else (lambda done: progress(done, total))
        try:
            with watched(lambda: allocated_bytes(dst), total, report):
                s.driver.copy_out(s.volume, src.path, dst)
        except BaseException:
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst, ignore_errors=True)
            raise
    return Copied(f"{src.image}:{src.path}", str(dst), 0, [])


def rm(target: str, recursive: bool = False, partition: int | None = None, undo: bool = False) -> int:
    """Remove a file, symlink or (with ``recursive``) a folder; returns bytes written back."""
    ip = parse_image_path(target)
    assert ip is not None
    if ip.path == "/":
        raise UsageError(f"{target}: refusing to remove the root folder")
    with open_volume(ip.image, write=True, partition=partition, undo=undo) as s:
        entry = _need(s.driver, s.volume, ip.image, ip.path)
        if entry.kind == "dir" and not recursive:
            raise FsPathError(f"{ip.image}:{ip.path}: is a folder (use -r)")
        s.driver.remove(s.volume, ip.path)
    return s.written


def mkdir(target: str, parents: bool = False, partition: int | None = None, undo: bool = False) -> int:
    """Make a folder (with ``parents``, its missing parents too); returns bytes written back."""
    ip = parse_image_path(target)
    assert ip is not None
    with open_volume(ip.image, write=True, partition=partition, undo=undo) as s:
        todo: list[str] = []
        path = ip.path
        while True:
            entry = s.driver.stat(s.volume, path)
            if entry is not None:
                if entry.kind != "dir":
                    raise FsPathError(f"{ip.image}:{path}: not a folder")
                if path == ip.path and not parents:
                    raise FsPathError(f"{ip.image}:{path}: exists")
                break
            todo.append(path)
            if not parents:
                _need(s.driver, s.volume, ip.image, parent_of(path), "dir")
                break
            path = parent_of(path)
        for p in reversed(todo):
            s.driver.mkdir(s.volume, p)
    return s.written
