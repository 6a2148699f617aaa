"""Pointing an existing differencing disk at a parent: UUID, time stamp, name and locators.

Crash safety: the new locator data (a relative W2ru and an absolute W2ku path, as ``create``
writes them) goes into fresh space past the end of the file, then the header (one 1024-byte
write) switches to it. Until that write the old header and the old locator data are untouched,
so an interruption leaves the child pointing at its old parent; afterwards at the new one. The
old locator data space is left unused (it is smaller than a block, so no leak is reported).
"""

from __future__ import annotations

from vhdtool.format.locators import header_parent_name, locator_area
from vhdtool.format.rewrite import MetadataEditor


def point_at_parent(
    editor: MetadataEditor, child_path: str, parent_path: str, parent_uuid: bytes, parent_timestamp: int
) -> None:
    """Rewrite the child's parent UUID, time stamp, name and locators (see module doc)."""
    area = locator_area(child_path, parent_path)
    start = editor.append(area.data)
    editor.sync()
    editor.set_header(
        parent_unique_id=parent_uuid,
        parent_timestamp=parent_timestamp,
        parent_unicode_name=header_parent_name(parent_path),
        parent_locators=area.entries(start),
    )
    editor.sync()
