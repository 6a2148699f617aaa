"""`vhdtool check`: validate an image's metadata without trusting it.

Findings are classified like qemu-img check: corruption (exit 2), leaks only (exit 3), warnings
(exit 0). Each finding has a stable ``code`` and the location it concerns so that ``repair`` can
act on it without validating again.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vhdtool.errors import NotVhdError, ParentError, ParentMissingError, VhdError
from vhdtool.format import rules
from vhdtool.format.batruns import allocated_indexes
from vhdtool.format.chain import find_parent, parent_modified_since_link
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.structs import (
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    FEATURE_RESERVED,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR,
    build_footer,
)
from vhdtool.ops.foreign import explain_not_vhd

CORRUPTION, LEAK, WARNING = "corruption", "leak", "warning"
CHECK_ERROR = "error"
"""Something could not be checked (a missing parent): neither clean nor corrupt, as qemu-img
check's check-errors (exit 1)."""


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    code: str
    message: str
    block: int | None = None
    offset: int | None = None
    length: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"severity": self.severity, "code": self.code, "message": self.message}
        for key in ("block", "offset", "length"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


LISTED_PER_CODE = 20
"""Findings of one kind listed in full; the rest are counted. A damaged BAT can hold a million
bad entries: listing each took 25 s and printed 4 million lines for a 4 MiB file (fuzzing)."""


@dataclass(slots=True)
class CheckReport:
    path: str
    type_name: str
    findings: list[Finding] = field(default_factory=list)
    """The listed findings: at most LISTED_PER_CODE of each code."""
    total_blocks: int = 0
    allocated_blocks: int = 0
    leaked_bytes: int = 0
    image_end_offset: int = 0
    listed_per_code: int | None = LISTED_PER_CODE
    """None lists every finding (repair needs each bad block)."""
    not_listed: dict[str, int] = field(default_factory=dict)
    """code -> findings counted but not listed."""
    _per_severity: Counter[str] = field(default_factory=Counter)
    _per_code: Counter[str] = field(default_factory=Counter)

    def add(self, severity: str, code: str, message: str, **where: int) -> None:
        if not self.listing(code):
            self.count_only(severity, code)
            return
        self._per_severity[severity] += 1
        self._per_code[code] += 1
        self.findings.append(Finding(severity, code, message, **where))

    def listing(self, code: str) -> bool:
        """Would a finding of ``code`` be listed? Loops over every block ask first, so that they
        do not format a message for each of a million entries only to count it."""
        return self.listed_per_code is None or self._per_code[code] < self.listed_per_code

    def count_only(self, severity: str, code: str, n: int = 1) -> None:
        self._per_severity[severity] += n
        self._per_code[code] += n
        self.not_listed[code] = self.not_listed.get(code, 0) + n

    def count(self, severity: str) -> int:
        """Findings of ``severity``, listed or not."""
        return self._per_severity[severity]

    @property
    def exit_code(self) -> int:
        if self.count(CHECK_ERROR):
            return 1
        if self.count(CORRUPTION):
            return 2
        if self.count(LEAK):
            return 3
        return 0

    def as_json(self) -> dict[str, Any]:
        """qemu-img check's keys, plus the findings."""
        return {
            "filename": self.path,
            "format": "vpc",
            "check-errors": self.count(CHECK_ERROR),
            "corruptions": self.count(CORRUPTION),
            "leaks": self.count(LEAK),
            "leaked-bytes": self.leaked_bytes,
            "warnings": self.count(WARNING),
            "image-end-offset": self.image_end_offset,
            "total-clusters": self.total_blocks,
            "allocated-clusters": self.allocated_blocks,
            "findings": [f.as_dict() for f in self.findings],
            "findings-not-listed": dict(self.not_listed),
        }


def check_image(path: str | os.PathLike[str], *, list_all: bool = False) -> CheckReport:
    """Validate one image (and its link to its parent). Raises VhdError only when the file is not
    a VHD at all or cannot be read; everything else is a finding. Past LISTED_PER_CODE findings
    of one kind the rest are only counted, unless ``list_all``."""
    path = os.fspath(path)
    try:
        meta = read_metadata(path)
    except NotVhdError as e:
        raise explain_not_vhd(path, e) from None
    report = CheckReport(
        path, meta.type_name, image_end_offset=meta.file_size, listed_per_code=None if list_all else LISTED_PER_CODE
    )
    _check_footers(meta, report)
    if meta.is_sparse:
        _check_header(meta, report)
        _check_blocks(meta, report)
    else:
        _check_fixed(meta, report)
    if meta.disk_type == DISK_TYPE_DIFFERENCING:
        _check_parent(meta, report)
    return report


def _check_footers(meta: ImageMetadata, report: CheckReport) -> None:
    t, c = meta.trailing, meta.copy
    if t is None and meta.torn_tail is not None:
        tail = meta.file_size - meta.torn_tail
        report.leaked_bytes += tail
        report.add(
            LEAK,
            "torn-tail",
            f"{meta.path}: footer missing, {tail} unreferenced bytes past the data (interrupted growth); "
            "the copy at offset 0 is good and a writable open restores it",
            offset=meta.torn_tail,
            length=tail,
        )
    elif t is None:
        report.add(CORRUPTION, "footer-missing", f"{meta.path}: no valid footer at the end of the file")
    elif not t.checksum_ok:
        report.add(CORRUPTION, "footer-checksum", f"{meta.path}: footer checksum mismatch", offset=t.offset)
    elif t.short:
        report.add(WARNING, "footer-short", f"{meta.path}: 511-byte footer (image from before Virtual PC 2004)")
    if meta.is_sparse:
        if c is None:
            report.add(CORRUPTION, "footer-copy-missing", f"{meta.path}: no footer copy at offset 0")
        elif not c.checksum_ok:
            report.add(CORRUPTION, "footer-copy-checksum", f"{meta.path}: footer copy at offset 0 has a bad checksum")
        elif t is not None and t.checksum_ok and build_footer(c.fields) != build_footer(t.fields):
            if _differ_only_in_size(c.fields, t.fields):
                # a resize stopped between its two footer writes: each reader sees a whole disk (vhdtool
                # and libvhdi the footer's, qemu the copy's), nothing is lost; repair aligns the copy
                report.add(
                    LEAK,
                    "footer-copy-stale",
                    f"{meta.path}: footer copy at offset 0 says {c.fields.current_size} bytes, the footer "
                    f"{t.fields.current_size} (an interrupted resize; qemu reads the copy): run 'vhdtool repair'",
                )
            else:
                report.add(
                    CORRUPTION, "footer-copy-differs", f"{meta.path}: footer copy at offset 0 differs from the footer"
                )
    f = meta.footer
    if not f.features & FEATURE_RESERVED:
        report.add(
            WARNING, "footer-features", f"{meta.path}: footer features {f.features:#x} lack the reserved bit 0x2"
        )
    size = meta.virtual_size
    if size % SECTOR:
        report.add(CORRUPTION, "size-unaligned", f"{meta.path}: current size {size} is not a multiple of 512")
    chs = meta.geometry
    if chs.size != size and not chs.is_maximum:
        report.add(
            WARNING,
            "size-chs",
            f"{meta.path}: CHS geometry {chs.cylinders}/{chs.heads}/{chs.sectors_per_track} gives {chs.size} bytes, "
            f"current size is {size}; qemu 7.2 reads "
            f"{rules.qemu72_virtual_size(bytes(f.creator_application), chs, size)}",
        )
    if f.original_size != size:
        report.add(
            WARNING,
            "size-original",
            f"{meta.path}: original size {f.original_size} differs from current size {size} (libvhdi reads the former)",
        )
    if f.saved_state:
        report.add(WARNING, "saved-state", f"{meta.path}: the saved-state flag is set")


_SIZE_FIELDS = ("current_size", "original_size", "cylinders", "heads", "sectors_per_track", "checksum")


def _differ_only_in_size(copy: Any, footer: Any) -> bool:
    """Whether two footers differ only in what a resize writes (sizes, geometry, checksum)."""
    return all(copy[k] == footer[k] for k in footer if k not in _SIZE_FIELDS and not k.startswith("_"))


def _check_fixed(meta: ImageMetadata, report: CheckReport) -> None:
    if meta.footer_offset < meta.virtual_size:
        report.add(
            CORRUPTION,
            "fixed-truncated",
            f"{meta.path}: fixed disk of {meta.virtual_size} bytes but the footer sits at {meta.footer_offset}",
        )


def _check_header(meta: ImageMetadata, report: CheckReport) -> None:
    h = meta.header
    if not meta.header_checksum_ok:
        report.add(CORRUPTION, "header-checksum", f"{meta.path}: dynamic header checksum mismatch")
    bs = int(h.block_size)
    if bs < SECTOR or bs & (bs - 1):
        report.add(CORRUPTION, "block-size", f"{meta.path}: block size {bs} is not a power of two")
    elif len(meta.bat) * bs < meta.virtual_size:
        report.add(
            CORRUPTION,
            "bat-too-small",
            f"{meta.path}: BAT of {len(meta.bat)} entries x {bs} bytes does not cover {meta.virtual_size} bytes",
        )


def _metadata_ranges(meta: ImageMetadata) -> list[tuple[int, int, str]]:
    h = meta.header
    ranges = [(0, FOOTER_SIZE, "footer copy"), (int(meta.footer.data_offset), HEADER_SIZE, "dynamic header")]
    bat_bytes = -(-len(meta.bat) * 4 // SECTOR) * SECTOR
    ranges.append((int(h.table_offset), bat_bytes, "BAT"))
    for loc in meta.locators:
        if loc.data_offset and loc.data_space:
            ranges.append((loc.data_offset, max(loc.data_space, loc.data_length), f"parent locator {loc.slot}"))
    return ranges


def _check_blocks(meta: ImageMetadata, report: CheckReport) -> None:
    bs = meta.block_size
    if bs < SECTOR or bs & (bs - 1):
        return
    bitmap_size = rules.bitmap_bytes(bs)
    span = bitmap_size + bs
    limit = meta.footer_offset
    report.total_blocks = len(meta.bat)
    used: list[tuple[int, int, str]] = [(o, n, what) for o, n, what in _metadata_ranges(meta)]
    blocks: list[tuple[int, int]] = []
    for index in allocated_indexes(meta.bat):
        entry = meta.bat[index]
        report.allocated_blocks += 1
        start = entry * SECTOR
        if start + span > limit:
            if report.listing("bat-outside"):
                report.add(
                    CORRUPTION,
                    "bat-outside",
                    f"{meta.path}: BAT entry {index} points at offset {start}, past the end of the data "
                    f"(block needs {span} bytes, footer at {limit})",
                    block=index,
                    offset=start,
                )
            else:
                report.count_only(CORRUPTION, "bat-outside")
            continue
        blocks.append((start, index))
    blocks.sort()
    # overlaps with metadata: the blocks starting in (m_off - span, m_off + m_len), found by bisection
    starts = [start for start, _ in blocks]
    for m_off, m_len, what in used:
        lo, hi = bisect.bisect_right(starts, m_off - span), bisect.bisect_left(starts, m_off + m_len)
        for k in range(lo, hi):
            if not report.listing("bat-overlap-metadata"):
                report.count_only(CORRUPTION, "bat-overlap-metadata", hi - k)
                break
            start, index = blocks[k]
            report.add(
                CORRUPTION,
                "bat-overlap-metadata",
                f"{meta.path}: block {index} at offset {start} overlaps the {what}",
                block=index,
                offset=start,
            )
    # overlaps with each other
    for (a_start, a_index), (b_start, b_index) in itertools.pairwise(blocks):
        if b_start >= a_start + span:
            continue
        if report.listing("bat-overlap"):
            report.add(
                CORRUPTION,
                "bat-overlap",
                f"{meta.path}: blocks {a_index} and {b_index} overlap (offsets {a_start} and {b_start})",
                block=b_index,
                offset=b_start,
            )
        else:
            report.count_only(CORRUPTION, "bat-overlap")
    _find_leaks(meta, report, blocks, span)
    _check_bitmaps(meta, report, blocks, bitmap_size)


def _find_leaks(meta: ImageMetadata, report: CheckReport, blocks: list[tuple[int, int]], span: int) -> None:
    """Space between blocks (or after the last one) that no BAT entry owns and that is at least
    one block long: what a crash between footer and BAT writes leaves. Smaller gaps are alignment."""
    metadata_end = max(o + n for o, n, _ in _metadata_ranges(meta))
    pos = metadata_end
    gaps = []
    for start, _ in blocks:
        if start - pos >= span:
            gaps.append((pos, start - pos))
        pos = max(pos, start + span)
    end = meta.torn_tail if meta.torn_tail is not None else meta.footer_offset  # a torn tail is counted apart
    if end - pos >= span:
        gaps.append((pos, end - pos))
    for offset, length in gaps:
        report.leaked_bytes += length
        report.add(
            LEAK,
            "leak",
            f"{meta.path}: {length} bytes at offset {offset} belong to no block (leaked)",
            offset=offset,
            length=length,
        )


def _check_bitmaps(meta: ImageMetadata, report: CheckReport, blocks: list[tuple[int, int]], bitmap_size: int) -> None:
    if meta.disk_type != DISK_TYPE_DYNAMIC or not blocks:
        return
    sectors = meta.block_size // SECTOR
    used = (sectors + 7) // 8
    empty, partial = [], []
    with open(meta.path, "rb") as f:
        fd = f.fileno()
        kinds: dict[int, str] = {}  # blocks that overlap share a bitmap: read each place once
        for start, index in blocks:
            kind = kinds.get(start)
            if kind is None:
                bitmap = os.pread(fd, used, start)
                kind = "full" if bitmap.count(0xFF) == used else "empty" if bitmap.count(0) == used else "partial"
                kinds[start] = kind
            if kind != "full":
                (empty if kind == "empty" else partial).append(index)
    if empty:
        report.add(
            WARNING,
            "bitmap-empty",
            f"{meta.path}: {len(empty)} allocated block(s) have an all-clear bitmap and read as zeros "
            f"(first: block {empty[0]})",
            block=empty[0],
        )
    if partial:
        report.add(
            WARNING,
            "bitmap-partial",
            f"{meta.path}: {len(partial)} allocated block(s) mark only some sectors present; the others read "
            f"as zeros (first: block {partial[0]})",
            block=partial[0],
        )


def _check_parent(meta: ImageMetadata, report: CheckReport) -> None:
    if not meta.locators and not meta.parent_name:
        report.add(CORRUPTION, "parent-no-locator", f"{meta.path}: differencing disk names no parent")
        return
    try:
        parent = find_parent(meta)
    except ParentMissingError as e:
        report.add(CHECK_ERROR, "parent-missing", f"{e}: the link to it cannot be checked")
        return
    except ParentError as e:
        report.add(CORRUPTION, "parent", str(e))
        return
    except VhdError as e:  # pragma: no cover - find_parent only raises ParentError today
        report.add(CORRUPTION, "parent", str(e))
        return
    if parent_modified_since_link(meta, parent):
        report.add(
            WARNING, "parent-timestamp", f"{meta.path}: parent {parent} was modified after the child was created"
        )
    if not any(loc.code == b"W2ru" for loc in meta.locators):
        report.add(WARNING, "parent-no-relative", f"{meta.path}: no relative (W2ru) parent locator")
