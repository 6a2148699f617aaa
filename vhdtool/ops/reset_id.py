"""`vhdtool reset-id`: give a disk a new UUID (so that copies of it do not collide), and point
its children at the new one.

Children are the differencing disks in the folders given (``children``) whose locators resolve
to the disk (a copy's original keeps its own children); they are opened and locked
before anything is written, so a child in use stops the operation with nothing changed.

Crash safety: in-place writes, held against Ctrl-C until done: the trailing footer, then the
footer copy, then each child's header (parent UUID and time stamp). The new UUID is chosen (or
given) up front and reported; a power cut between the disk and its children leaves children
expecting the old UUID — run again with ``--uuid`` set to the reported UUID to finish.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.metadata import read_metadata
from vhdtool.format.validate import refuse_stale_footer_copy
from vhdtool.ops.editing import edit_image, file_stamp, restamp_children
from vhdtool.ops.family import children_resolving_to
from vhdtool.ops.interrupts import deferred_interrupts


@dataclass(frozen=True, slots=True)
class IdReset:
    path: str
    old_uuid: str
    new_uuid: str
    children: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    """Children seen beside the disk that were not updated (no ``children`` folder was given)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "filename": self.path,
            "old-uuid": self.old_uuid,
            "new-uuid": self.new_uuid,
            "children": self.children,
            "dangling-children": self.dangling,
        }


def reset_id(
    path: str | os.PathLike[str],
    *,
    children: list[str | os.PathLike[str]] | None = None,
    new_uuid: uuid.UUID | str | None = None,
) -> IdReset:
    """Write a new UUID into ``path``'s footers; update the children found in ``children`` folders."""
    path = os.fspath(path)
    folders = [os.fspath(d) for d in children or []]
    for folder in folders:
        if not os.path.isdir(folder):
            raise UsageError(f"{folder}: is not a folder")
    meta = read_metadata(path)
    old = meta.uuid
    try:
        new = uuid.uuid4() if new_uuid is None else uuid.UUID(str(new_uuid))
    except ValueError:
        raise UsageError(f"not a UUID: {new_uuid!r}") from None
    # by where they point, not by UUID alone: a copy shares its original's UUID, and the original's
    # children are not the copy's; a run interrupted after the footer still finds its children
    kids = children_resolving_to(path, folders, [path]) if folders else []
    beside = [] if folders else children_resolving_to(path, [os.path.dirname(os.path.abspath(path))], [path])
    kid_stamps = {kid: file_stamp(kid) for kid in kids}
    with contextlib.ExitStack() as stack:
        editor = stack.enter_context(edit_image(path))
        refuse_stale_footer_copy(editor.meta, "a new UUID")
        kid_editors = [stack.enter_context(edit_image(kid)) for kid in kids]  # all locked before any write
        with deferred_interrupts():
            if new != old:
                editor.set_footer(unique_id=new.bytes)
                editor.sync()
            stamp = rules.to_vhd_timestamp(os.fstat(editor.fd).st_mtime)
            for kid in kid_editors:
                kid.set_header(parent_unique_id=new.bytes, parent_timestamp=stamp)
                kid.sync()
    for kid in kids:
        restamp_children(kid, folders, kid_stamps[kid])
    return IdReset(path, str(old), str(new), kids, beside)
