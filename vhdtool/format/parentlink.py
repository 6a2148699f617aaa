"""Pointing an existing differencing disk at a parent: UUID, time stamp, name and locators.

Crash safety: the new locator data (a relative W2ru and an absolute W2ku path, as ``create``
writes them) goes into fresh space past the end of the file, then the header (one 1024-byte
write) switches to it. Until that write the old header and the old locator data are untouched,
so an interruption leaves the child pointing at its old parent; afterwards at the new one. The
old locator data space is left unused (it is smaller than a block, so no leak is reported).
"""

from __future__ import annotations

import os

from vhdtool.format.locators import encode_locator_data, header_parent_name, relative_windows_path
from vhdtool.format.rewrite import MetadataEditor, round_up
from vhdtool.format.structs import LOCATOR_SLOTS

_EMPTY = {
    "platform_code": bytes(4),
    "platform_data_space": 0,
    "platform_data_length": 0,
    "reserved": 0,
    "platform_data_offset": 0,
}


def locator_area(child_path: str, parent_path: str) -> tuple[list[tuple[bytes, int, int]], bytes]:
    """[(code, offset in area, length)] and the area bytes: W2ru then W2ku, each sector padded."""
    slots, area = [], bytearray()
    for code, text in (
        (b"W2ru", relative_windows_path(parent_path, child_path)),
        (b"W2ku", os.path.abspath(parent_path)),
    ):
        data = encode_locator_data(code, text)
        slots.append((code, len(area), len(data)))
        area += data + bytes(round_up(max(len(data), 1)) - len(data))
    return slots, bytes(area)


def point_at_parent(
    editor: MetadataEditor, child_path: str, parent_path: str, parent_uuid: bytes, parent_timestamp: int
) -> None:
    """Rewrite the child's parent UUID, time stamp, name and locators (see module doc)."""
    slots, area = locator_area(child_path, parent_path)
    start = editor.append(area)
    editor.sync()
    entries = []
    for index, (code, offset, length) in enumerate(slots):
        end = slots[index + 1][1] if index + 1 < len(slots) else len(area)
        entries.append(
            {
                "platform_code": code,
                "platform_data_space": end - offset,  # bytes, as Windows and VirtualBox write it
                "platform_data_length": length,
                "reserved": 0,
                "platform_data_offset": start + offset,
            }
        )
    entries += [_EMPTY] * (LOCATOR_SLOTS - len(entries))
    editor.set_header(
        parent_unique_id=parent_uuid,
        parent_timestamp=parent_timestamp,
        parent_unicode_name=header_parent_name(parent_path),
        parent_locators=entries,
    )
    editor.sync()
