"""Reading an image's metadata tolerantly: both footers, the dynamic header, the BAT, the locators.

This layer never refuses a damaged image outright (``check`` and ``repair`` need to look at
damage); it records what it found. The image classes decide what they can open.
"""

from __future__ import annotations

import os
import stat
import sys
import uuid
from array import array
from typing import TYPE_CHECKING, Any, NamedTuple

from construct import Container

from vhdtool.errors import IoError, NotVhdError, UsageError, VhdError
from vhdtool.format import rules
from vhdtool.format.batruns import allocated_runs
from vhdtool.format.sparselayout import BlockLayout, metadata_end, valid_block_size
from vhdtool.format.structs import (
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED,
    DISK_TYPE_NAMES,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    HEADER_COOKIE,
    HEADER_SIZE,
    parse_footer,
    parse_header,
)

if TYPE_CHECKING:
    from vhdtool.format.locators import Locator

MAX_TABLE_ENTRIES = (rules.MAX_DYNAMIC_SIZE // 4096) + 1
"""No sane BAT has more entries than 2040 GiB in the smallest (4 KiB) blocks."""


class FooterRead(NamedTuple):
    fields: Container
    offset: int
    checksum_ok: bool
    short: bool = False
    """A 511-byte footer (images from before Virtual PC 2004)."""


class ImageMetadata:
    """What reading an image found, filled in step by step as the reader gets further (so a
    mutable record, not a tuple).

    ``footer_source`` is 'trailing' or 'copy' (the copy at offset 0 when the trailing footer is
    damaged). ``torn_tail`` is set when the trailing footer is missing but everything else is
    sound (what a crash or a power cut during a growth of the file leaves): where the referenced
    data ends. Nothing is lost; a writable open puts the footer back after the data.
    """

    __slots__ = (
        "bat",
        "copy",
        "file_size",
        "footer",
        "footer_source",
        "header",
        "header_checksum_ok",
        "locators",
        "parent_name",
        "path",
        "torn_tail",
        "trailing",
        "warnings",
    )

    def __init__(
        self,
        path: str,
        file_size: int,
        trailing: FooterRead | None,
        copy: FooterRead | None,
        footer: Container,
        footer_source: str,
        header: Container | None = None,
        header_checksum_ok: bool = True,
        bat: array | None = None,
        locators: list[Locator] | None = None,
        parent_name: str = "",
        warnings: list[str] | None = None,
        torn_tail: int | None = None,
    ) -> None:
        self.path = path
        self.file_size = file_size
        self.trailing = trailing
        self.copy = copy
        self.footer = footer
        self.footer_source = footer_source
        self.header = header
        self.header_checksum_ok = header_checksum_ok
        self.bat = bat
        self.locators: list[Locator] = [] if locators is None else locators
        self.parent_name = parent_name
        self.warnings: list[str] = [] if warnings is None else warnings
        self.torn_tail = torn_tail

    def _replace(self, **changes: Any) -> ImageMetadata:
        """A shallow copy with ``changes`` made (repair plans its passes on such copies)."""
        unknown = changes.keys() - set(self.__slots__)
        if unknown:
            raise TypeError(f"ImageMetadata has no field {sorted(unknown)[0]!r}")
        return ImageMetadata(**{name: changes.get(name, getattr(self, name)) for name in self.__slots__})

    def __repr__(self) -> str:
        return f"ImageMetadata(path={self.path!r}, type={self.type_name}, file_size={self.file_size})"

    @property
    def disk_type(self) -> int:
        return int(self.footer.disk_type)

    @property
    def type_name(self) -> str:
        return DISK_TYPE_NAMES.get(self.disk_type, f"unknown ({self.disk_type})")

    @property
    def is_sparse(self) -> bool:
        return self.disk_type in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING)

    @property
    def virtual_size(self) -> int:
        return int(self.footer.current_size)

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(self.footer.unique_id))

    @property
    def parent_uuid(self) -> uuid.UUID | None:
        if self.header is None or self.disk_type != DISK_TYPE_DIFFERENCING:
            return None
        return uuid.UUID(bytes=bytes(self.header.parent_unique_id))

    @property
    def geometry(self) -> rules.Geometry:
        f = self.footer
        return rules.Geometry(f.cylinders, f.heads, f.sectors_per_track)

    @property
    def footer_offset(self) -> int:
        """Where the trailing footer starts; the file end when there is none (damaged)."""
        return self.trailing.offset if self.trailing else self.file_size

    @property
    def block_size(self) -> int:
        return int(self.header.block_size) if self.header is not None else 0


def _open_for_reading(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError as e:
        raise VhdError(f"{path}: cannot open: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory, not a VHD file")
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise VhdError(f"{path}: cannot open: {e.strerror}") from None


def _file_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _try_footer(fd: int, offset: int, length: int) -> FooterRead | None:
    if offset < 0:
        return None
    raw = os.pread(fd, length, offset)
    if len(raw) < length or raw[:8] != FOOTER_COOKIE:
        return None
    raw = raw + bytes(FOOTER_SIZE - len(raw))
    fields, ok = parse_footer(raw)
    if not ok and length == FOOTER_SIZE - 1:
        # a 511-byte footer was checksummed over its 511 bytes; a zero pad changes no sum
        ok = fields.checksum == (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF
    return FooterRead(fields, offset, ok, short=length != FOOTER_SIZE)


def read_footers(fd: int, path: str) -> tuple[FooterRead | None, FooterRead | None, int]:
    """The trailing footer (512 or 511 bytes), the copy at offset 0, and the file size."""
    size = _file_size(fd)
    if size < FOOTER_SIZE - 1:
        raise NotVhdError(f"{path}: not a VHD: file is {size} bytes, smaller than a footer")
    trailing = _try_footer(fd, size - FOOTER_SIZE, FOOTER_SIZE)
    if trailing is None:
        trailing = _try_footer(fd, size - (FOOTER_SIZE - 1), FOOTER_SIZE - 1)
    copy = _try_footer(fd, 0, FOOTER_SIZE) if size >= 2 * FOOTER_SIZE else None
    return trailing, copy, size


def choose_footer(path: str, trailing: FooterRead | None, copy: FooterRead | None) -> tuple[Container, str, list[str]]:
    """Which footer to believe: the trailing one unless it is damaged and the copy is good."""
    warnings: list[str] = []
    if trailing and trailing.checksum_ok:
        return trailing.fields, "trailing", warnings
    if copy and copy.checksum_ok and copy.fields.disk_type in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
        what = "has a bad checksum" if trailing else "is missing or damaged"
        warnings.append(f"{path}: the footer at the end of the file {what}; using the copy at offset 0")
        return copy.fields, "copy", warnings
    if trailing:
        warnings.append(f"{path}: footer checksum mismatch (stored {trailing.fields.checksum:#010x})")
        return trailing.fields, "trailing", warnings
    if copy:
        warnings.append(f"{path}: the footer at the end of the file is missing; using the copy at offset 0")
        return copy.fields, "copy", warnings
    raise NotVhdError(f"{path}: not a VHD: no 'conectix' footer at the end of the file or at offset 0")


def _read_parent_link(fd: int, header: Container, file_size: int) -> tuple[str, list[Locator]]:
    """A differencing image's Parent Unicode Name and parent locators (only such an image has a
    parent, so only its open loads the locator module)."""
    from vhdtool.format.locators import EMPTY_CODE, Locator, data_space_bytes, decode_locator_data, decode_parent_name

    locators = []
    for slot, entry in enumerate(header.parent_locators):
        code = bytes(entry.platform_code)
        if code == EMPTY_CODE:
            continue
        path = None
        length = int(entry.platform_data_length)
        offset = int(entry.platform_data_offset)
        if 0 < length <= 65536 and offset > 0 and offset + length <= file_size:
            path = decode_locator_data(code, os.pread(fd, length, offset))
        locators.append(Locator(slot, code, offset, data_space_bytes(int(entry.platform_data_space)), length, path))
    return decode_parent_name(bytes(header.parent_unicode_name)), locators


def read_metadata(path: str | os.PathLike[str], fd: int | None = None) -> ImageMetadata:
    """Read everything but the data. Raises NotVhdError when there is no footer at all,
    CorruptImageError when the header or BAT cannot be located, IoError when reading fails;
    other damage is reported in ``warnings`` or left for validation."""
    path = os.fspath(path)
    own_fd = fd is None
    if fd is None:
        fd = _open_for_reading(path)
    try:
        return _read_metadata(path, fd)
    except OSError as e:
        raise IoError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        if own_fd:
            os.close(fd)


def _read_metadata(path: str, fd: int) -> ImageMetadata:
    trailing, copy, size = read_footers(fd, path)
    footer, source, warnings = choose_footer(path, trailing, copy)
    meta = ImageMetadata(path, size, trailing, copy, footer, source, warnings=warnings)
    if meta.disk_type not in (DISK_TYPE_FIXED, DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
        raise NotVhdError(f"{path}: unsupported disk type {meta.disk_type} in the footer")
    if meta.is_sparse:
        _read_sparse_metadata(fd, meta)
    return meta


def _read_sparse_metadata(fd: int, meta: ImageMetadata) -> None:
    from vhdtool.errors import CorruptImageError

    offset = int(meta.footer.data_offset)
    if offset + HEADER_SIZE > meta.file_size or offset < 0:
        raise CorruptImageError(
            f"{meta.path}: dynamic header offset {offset} lies outside the file of {meta.file_size} bytes"
        )
    raw = os.pread(fd, HEADER_SIZE, offset)
    if raw[:8] != HEADER_COOKIE:
        raise CorruptImageError(f"{meta.path}: no 'cxsparse' dynamic header at offset {offset}")
    header, ok = parse_header(raw)
    meta.header, meta.header_checksum_ok = header, ok
    if not ok:
        meta.warnings.append(f"{meta.path}: dynamic header checksum mismatch (stored {header.checksum:#010x})")
    entries = int(header.max_table_entries)
    table = int(header.table_offset)
    if entries > MAX_TABLE_ENTRIES:
        raise CorruptImageError(f"{meta.path}: BAT claims {entries} entries, more than any VHD can have")
    if table + entries * 4 > meta.file_size:
        raise CorruptImageError(
            f"{meta.path}: BAT of {entries} entries at offset {table} runs past the end of the file "
            f"({meta.file_size} bytes)"
        )
    meta.bat = _read_bat(fd, entries, table)
    if len(meta.bat) < entries:
        raise CorruptImageError(f"{meta.path}: the file ended while its BAT of {entries} entries was read")
    if meta.disk_type == DISK_TYPE_DIFFERENCING:
        meta.parent_name, meta.locators = _read_parent_link(fd, header, meta.file_size)
    if meta.trailing is None and meta.footer_source == "copy" and ok:
        meta.torn_tail = _torn_tail(meta)
        if meta.torn_tail is not None:
            meta.warnings[:] = [
                f"{meta.path}: the footer at the end is missing (interrupted growth of the file?); "
                "using the copy at offset 0 (a writable open restores it)"
            ]


def _read_bat(fd: int, entries: int, offset: int) -> array:
    """The BAT as an array of host-order integers, read straight into the array: one copy of
    the table and one set of fresh pages, where reading bytes and converting them costs two.
    Shorter than ``entries`` only when the file ends first."""
    bat = array("I", [0]) * entries
    done = 0
    with memoryview(bat) as view, view.cast("B") as raw:
        while done < len(raw):
            n = os.preadv(fd, [raw[done:]], offset + done)
            if n == 0:
                break
            done += n
    del bat[done // 4 :]
    if sys.byteorder == "little":
        bat.byteswap()
    return bat


def _torn_tail(meta: ImageMetadata) -> int | None:
    """Where the referenced data ends, when the trailing footer is missing but nothing else is:
    every block lies inside the file and the unreferenced tail is no longer than one growth of
    the file reserves (plus a block in flight). Else None (the image is damaged)."""
    if not valid_block_size(meta.block_size):
        return None
    span = BlockLayout(meta.block_size).span
    end = metadata_end(meta)
    for start, stop in allocated_runs(meta.bat):
        end = max(end, BlockLayout.start(max(meta.bat[start:stop])) + span)
    if end > meta.file_size or meta.file_size - end > TORN_TAIL_LIMIT + 2 * span:
        return None
    return end


TORN_TAIL_LIMIT = 64 << 20
"""Longer than any room a growth reserves (vhdtool reserves 32 MiB at a time)."""
