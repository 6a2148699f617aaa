"""Finding images by UUID in folders: the children of a disk, or a moved parent.

A child names its parent by UUID; nothing points the other way, so the children of a disk are
found by looking at the VHDs beside it (and wherever the user says). Only the footers and the
dynamic header of each candidate are read.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator

from vhdtool.errors import ParentError, VhdError
from vhdtool.format.chain import find_parent
from vhdtool.format.locators import candidate_paths
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING

EXTENSIONS = (".vhd", ".avhd")


def images_in(folders: Iterable[str]) -> Iterator[ImageMetadata]:
    """Metadata of every readable VHD (by extension) in the folders, each file once."""
    seen: set[str] = set()
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in seen or not name.lower().endswith(EXTENSIONS) or not os.path.isfile(path):
                continue
            seen.add(real)
            try:
                yield read_metadata(path)
            except (VhdError, OSError):
                continue


def children_of(parent_uuid: uuid.UUID, folders: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Paths of the differencing disks in ``folders`` whose parent UUID is ``parent_uuid``."""
    skip = {os.path.realpath(p) for p in exclude}
    return [
        meta.path
        for meta in images_in(folders)
        if meta.disk_type == DISK_TYPE_DIFFERENCING
        and meta.parent_uuid == parent_uuid
        and os.path.realpath(meta.path) not in skip
    ]


def children_by_path(parent: str, folders: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Differencing disks in ``folders`` whose locators or parent name lead to the file ``parent``
    (whatever parent UUID they record)."""
    target = os.path.realpath(parent)
    return _children(
        folders,
        exclude,
        lambda meta: any(
            os.path.realpath(c) == target for c in candidate_paths(meta.path, meta.locators, meta.parent_name)
        ),
    )


def children_resolving_to(parent: str, folders: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Differencing disks in ``folders`` that open ``parent`` as their parent: the first of their
    locators that leads to a disk with the UUID they expect (or, when none does, the first that
    leads to a file) is ``parent``. A copy of a disk shares its UUID; its original's children
    still resolve to the original, and only those that resolve here belong to ``parent``."""
    target = os.path.realpath(parent)
    return _children(folders, exclude, lambda meta: _resolved_parent(meta) == target)


def _children(folders: Iterable[str], exclude: Iterable[str], leads_here: Callable[[ImageMetadata], bool]) -> list[str]:
    skip = {os.path.realpath(p) for p in exclude}
    return [
        meta.path
        for meta in images_in(folders)
        if meta.disk_type == DISK_TYPE_DIFFERENCING and os.path.realpath(meta.path) not in skip and leads_here(meta)
    ]


def refuse_if_children(path: str, folders: Iterable[str], change: str) -> None:
    """Refuse a change to ``path`` that would change what its children read: the differencing
    disks beside it or in ``folders`` that resolve to it."""
    kids = children_resolving_to(path, [os.path.dirname(os.path.abspath(path)), *folders], [path])
    if kids:
        raise VhdError(
            f"{path}: {change} would change what its differencing children read ({', '.join(kids)}); "
            "merge them into it first (vhdtool merge CHILD), or rebase them onto another disk"
        )


def _resolved_parent(meta: ImageMetadata) -> str | None:
    try:
        return os.path.realpath(find_parent(meta))
    except ParentError:
        candidates = candidate_paths(meta.path, meta.locators, meta.parent_name)
        return next((os.path.realpath(c) for c in candidates if os.path.isfile(c)), None)


def find_by_uuid(wanted: uuid.UUID, folders: Iterable[str], exclude: Iterable[str] = ()) -> str | None:
    """The first VHD in ``folders`` whose footer UUID is ``wanted``."""
    skip = {os.path.realpath(p) for p in exclude}
    for meta in images_in(folders):
        if meta.uuid == wanted and os.path.realpath(meta.path) not in skip:
            return meta.path
    return None
