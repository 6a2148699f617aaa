"""`vhdtool relink`: repair the parent locators of a chain that was moved or renamed.

CHILD gets its parent found again: the given ``parent``, else through its locators, else by
UUID among the VHDs in its own folder. Then its header gets a relative and an absolute locator
to that file and the parent name; the UUID is kept (the parent is the same disk, checked by that
UUID) and the time stamp becomes the parent file's current time, so that a copied chain (new
file times) stops warning that its parent was modified. A stored 0 (Windows 10 writes it) stays
0. The disks below CHILD are parents: they are rewritten only where their own locators no longer
find their parent (a moved chain cannot be read otherwise), or all of them with ``whole_chain``
(a copied chain whose every disk should record its parent's new time). A parent that still
finds its own parent is not written through its child. With ``check_content``
the found parent is first compared with the file the old locators still point at (the
original of a copy) and the relink is refused if they read differently. Every parent is found
(and compared) before anything is written, so a chain with a missing link is refused unchanged.

Crash safety: per disk, the new locator data is written past the end of the file and then the
header switches to it in one write (``format.parentlink``); an interruption leaves each disk
pointing at its old or its new locators.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from vhdtool.errors import ParentError, UsageError
from vhdtool.format.chain import find_parent
from vhdtool.format.locators import candidate_paths
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.parentlink import point_at_parent
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING
from vhdtool.ops.editing import edit_image, file_stamp
from vhdtool.ops.family import find_by_uuid
from vhdtool.ops.interrupts import deferred_interrupts

MAX_DEPTH = 256


@dataclass(frozen=True, slots=True)
class Relinked:
    links: list[tuple[str, str]]
    """(child, parent) pairs that were rewritten, the top first."""

    def as_json(self) -> list[dict[str, Any]]:
        return [{"filename": c, "backing-filename": p} for c, p in self.links]


def relink(
    child: str | os.PathLike[str],
    parent: str | os.PathLike[str] | None = None,
    *,
    check_content: bool = False,
    whole_chain: bool = False,
) -> Relinked:
    child = os.fspath(child)
    meta = read_metadata(child)
    if meta.disk_type != DISK_TYPE_DIFFERENCING:
        raise UsageError(f"{child}: is a {meta.type_name} disk, not a differencing disk; it has no parent")
    links: list[tuple[str, str]] = []
    given = None if parent is None else os.fspath(parent)
    seen = {os.path.realpath(child)}
    while meta.disk_type == DISK_TYPE_DIFFERENCING and len(links) < MAX_DEPTH:
        if links and not whole_chain and _finds_its_parent(meta):
            break
        found = locate_parent(meta, given)
        links.append((meta.path, found))
        if os.path.realpath(found) in seen:
            raise ParentError(f"{meta.path}: differencing chain loops back to {found}")
        seen.add(os.path.realpath(found))
        if check_content:
            _same_content_as_original(meta, found)
        given = None
        meta = read_metadata(found)
    # deepest first: a disk's own edit changes its file time, which its child then records
    with contextlib.ExitStack() as stack:
        # every disk of the chain opened, locked and judged writable before the first write: a
        # refusal halfway (a corrupt child, one in use) must not leave the chain half relinked
        editors = [(stack.enter_context(edit_image(path)), found) for path, found in reversed(links)]
        for editor, found in editors:
            with deferred_interrupts():
                header = editor.header
                assert header is not None
                stamp = file_stamp(found) if int(header.parent_timestamp) else 0
                point_at_parent(editor, editor.meta.path, found, bytes(header.parent_unique_id), stamp)
    return Relinked(links)


def _same_content_as_original(meta: ImageMetadata, found: str) -> None:
    """Refuse unless ``found`` reads as the file with the same UUID that the locators name."""
    from vhdtool.ops.compare import compare

    originals = [
        p
        for p in candidate_paths(meta.path, meta.locators, meta.parent_name)
        if os.path.isfile(p) and not os.path.samefile(p, found) and read_metadata(p).uuid == meta.parent_uuid
    ]
    if not originals:
        raise ParentError(
            f"{meta.path}: --check-content: no other file with the parent's UUID {meta.parent_uuid} is where the "
            f"locators point, so {found} cannot be compared with it"
        )
    result = compare(originals[0], found)
    if not result.identical:
        raise ParentError(
            f"{meta.path}: {found} does not read as {originals[0]} (first difference at offset {result.offset}); "
            "not relinked"
        )


def _finds_its_parent(meta: ImageMetadata) -> bool:
    try:
        find_parent(meta)
    except ParentError:
        return False
    return True


def locate_parent(meta: ImageMetadata, given: str | None = None) -> str:
    """The file that is ``meta``'s parent: ``given`` (checked by UUID), the locators, or by UUID
    among the VHDs in the child's folder."""
    if given is not None:
        found = read_metadata(given)
        if found.uuid != meta.parent_uuid:
            raise ParentError(
                f"{given}: has UUID {found.uuid}, but {meta.path} expects parent UUID {meta.parent_uuid} "
                "(use 'vhdtool rebase --unsafe' to give it another parent)"
            )
        return given
    try:
        return find_parent(meta)
    except ParentError:
        folder = os.path.dirname(os.path.abspath(meta.path))
        assert meta.parent_uuid is not None
        path = find_by_uuid(meta.parent_uuid, [folder], exclude=[meta.path])
        if path is None:
            raise ParentError(
                f"{meta.path}: parent with UUID {meta.parent_uuid} not found through the locators nor in {folder}"
            ) from None
        return path
