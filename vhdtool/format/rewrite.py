"""Ordered in-place edits of an image's metadata: footers, dynamic header, BAT, appended regions.

The operations that change an existing image (resize, compact, rebase, relink, reset-id, repair)
build on these few steps, each of which leaves a readable image if the process dies after it:

- ``append``: the footer is written at the new end first, then the region into the gap (the same
  order as block allocation in ``sparse.py``); until something points at the region it is a leak.
- ``set_bat``: BAT entries are 4-byte writes; callers write (and ``sync``) the data an entry points
  at before the entry.
- ``set_header``: one 1024-byte write with a fresh checksum.
- ``set_footer``: the trailing footer (the one readers trust) first, then the copy at offset 0.
- ``truncate``: the footer is written at the new end, synced, then the file is cut after it.
- ``copy_block`` / ``append_copy``: a block's bytes copied into free space (or past the end);
  the caller syncs before any BAT entry points at the copy, so until then it is a leak.
- ``put_footer`` / ``put_footer_copy``: a footer written where a repair decided it belongs;
  ``zero`` clears bytes that are about to become (or just stopped being) part of the disk.

The editor works on a file descriptor its caller opened (and locked); it keeps ``meta`` up to date
so that a sequence of steps sees its own changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from construct import Container

from vhdtool.format.blockdev import pwrite_all
from vhdtool.format.metadata import ImageMetadata, read_footers
from vhdtool.format.rules import SECTOR
from vhdtool.format.sparselayout import BAT_ENTRY_BYTES, round_up, table_bytes
from vhdtool.format.structs import FOOTER_SIZE, build_footer, build_header

ZERO_CHUNK = 4 << 20
"""Bytes of zeros written at a time."""


class MetadataEditor:
    """In-place, ordered metadata writes on an open image file (see the module docstring)."""

    def __init__(self, fd: int, meta: ImageMetadata) -> None:
        self.fd = fd
        self.meta = meta
        self.footer: Container = Container(meta.footer)
        self.header: Container | None = Container(meta.header) if meta.header is not None else None
        # where the trailing footer is now (read again: opening an image may have restored it since
        # ``meta`` was read), else where it belongs; new regions start here
        trailing, _, _ = read_footers(fd, meta.path)
        self.end = trailing.offset if trailing is not None else round_up(meta.footer_offset)

    # -- single steps ----------------------------------------------------------------------

    def sync(self) -> None:
        os.fsync(self.fd)

    def append(self, data: bytes | bytearray | memoryview, align: int = SECTOR) -> int:
        """Write ``data`` past the current end (footer first); return its offset."""
        start = round_up(self.end, align)
        new_end = round_up(start + len(data))
        pwrite_all(self.fd, new_end, build_footer(self.footer))
        pwrite_all(self.fd, start, data)
        self.end = new_end
        return start

    def reserve(self, length: int, align: int = SECTOR) -> int:
        """Move the footer past a new region of ``length`` bytes left for the caller to fill."""
        start = round_up(self.end, align)
        new_end = round_up(start + length)
        pwrite_all(self.fd, new_end, build_footer(self.footer))
        self.end = new_end
        return start

    def set_bat(self, changes: Mapping[int, int]) -> None:
        """Write BAT entries {index: sector}; contiguous indexes go out in one write."""
        assert self.header is not None and self.meta.bat is not None
        table = int(self.header.table_offset)
        bat = self.meta.bat
        for index, value in changes.items():
            bat[index] = value
        indexes = sorted(changes)
        i = 0
        while i < len(indexes):
            j = i
            while j + 1 < len(indexes) and indexes[j + 1] == indexes[j] + 1:
                j += 1
            first, last = indexes[i], indexes[j]
            raw = b"".join(bat[k].to_bytes(4, "big") for k in range(first, last + 1))
            pwrite_all(self.fd, table + 4 * first, raw)
            i = j + 1

    def write_bat_range(self, first: int, values: list[int]) -> None:
        """Write ``values`` as BAT entries first.. (used when the table itself grows)."""
        assert self.header is not None
        raw = b"".join(v.to_bytes(4, "big") for v in values)
        pwrite_all(self.fd, int(self.header.table_offset) + 4 * first, raw)

    def extend_bat(self, old_entries: int, entries: int) -> None:
        """Mark the table's new entries old_entries..entries (and its padding) unallocated, before
        the header counts them."""
        assert self.header is not None
        table = int(self.header.table_offset)
        start, end = table + BAT_ENTRY_BYTES * old_entries, table + table_bytes(entries)
        pwrite_all(self.fd, start, b"\xff" * (end - start))

    def set_header(self, **fields: Any) -> None:
        assert self.header is not None
        self.header.update(fields)
        pwrite_all(self.fd, int(self.footer.data_offset), build_header(self.header))
        self.meta.header = Container(self.header)
        self.meta.header_checksum_ok = True

    def set_footer(self, **fields: Any) -> None:
        """Rewrite the trailing footer, then the copy at offset 0 (dynamic and differencing)."""
        self.footer.update(fields)
        raw = build_footer(self.footer)
        pwrite_all(self.fd, self.end, raw)
        if self.meta.is_sparse:
            self.sync()  # the trailing footer is the one readers trust: it lands first
            pwrite_all(self.fd, 0, raw)
        self.meta.footer = Container(self.footer)

    def truncate(self, new_end: int) -> None:
        """Put the footer at ``new_end`` and cut the file after it (only what lies past it is lost)."""
        new_end = round_up(new_end)
        pwrite_all(self.fd, new_end, build_footer(self.footer))
        self.sync()
        os.ftruncate(self.fd, new_end + FOOTER_SIZE)
        self.end = new_end

    def cut(self, length: int) -> None:
        """Cut the file to ``length`` bytes (the caller has put a footer at its end)."""
        os.ftruncate(self.fd, length)

    # -- moving bytes --------------------------------------------------------------------------

    def copy_block(self, source: int, target: int, length: int) -> None:
        """Copy ``length`` bytes of a block from file offset ``source`` to ``target``."""
        pwrite_all(self.fd, target, os.pread(self.fd, length, source))

    def append_copy(self, source: int, length: int) -> int:
        """Copy ``length`` bytes at ``source`` past the current end (footer first); return where."""
        return self.append(os.pread(self.fd, length, source))

    def zero(self, offset: int, length: int) -> None:
        """Write ``length`` zero bytes at ``offset``."""
        for start in range(offset, offset + length, ZERO_CHUNK):
            pwrite_all(self.fd, start, bytes(min(ZERO_CHUNK, offset + length - start)))

    def put_footer(self, offset: int, fields: Mapping[str, Any]) -> None:
        """Write a footer of ``fields`` at ``offset`` (where a repair found it belongs)."""
        pwrite_all(self.fd, offset, build_footer(fields))

    def put_footer_copy(self, fields: Mapping[str, Any]) -> None:
        """Write the footer copy at offset 0 of a dynamic or differencing image."""
        pwrite_all(self.fd, 0, build_footer(fields))
