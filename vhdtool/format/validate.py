"""What makes an image's structures trustworthy: the findings `check` reports, and the rule that
an image with any corruption among them is opened only read-only.

Findings are classified like qemu-img check: corruption (exit 2), leaks only (exit 3), warnings
(exit 0). Each finding has a stable ``code`` and the location it concerns so that ``repair`` can
act on it without validating again. Everything here works on an ``ImageMetadata`` already read,
so that the writable open (format.chain) and ``check`` (ops.check) judge by the same rules.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import Counter
from typing import Any, NamedTuple

from vhdtool.errors import CorruptImageError, RefusedError
from vhdtool.format import rules
from vhdtool.format.batruns import allocated_indexes
from vhdtool.format.metadata import ImageMetadata
from vhdtool.format.rules import SECTOR
from vhdtool.format.sparselayout import (
    DATA_ALIGNMENT,
    BlockLayout,
    metadata_end,
    metadata_ranges,
    stored_blocks,
    table_covers,
    valid_block_size,
)
from vhdtool.format.structs import (
    DISK_TYPE_DYNAMIC,
    FEATURE_RESERVED,
    build_footer,
)

CORRUPTION, LEAK, WARNING = "corruption", "leak", "warning"
CHECK_ERROR = "error"
"""Something could not be checked (a missing parent): neither clean nor corrupt, as qemu-img
check's check-errors (exit 1)."""


class Finding(NamedTuple):
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
bad entries, and listing each would take far longer and print far more than the file is worth."""


class CheckReport:
    """What a check found, added to as it goes. ``findings`` are the listed ones: at most
    ``listed_per_code`` of each code (None lists every finding: repair needs each bad block);
    ``not_listed`` maps a code to the findings counted but not listed."""

    __slots__ = (
        "_per_code",
        "_per_severity",
        "allocated_blocks",
        "findings",
        "image_end_offset",
        "leaked_bytes",
        "listed_per_code",
        "not_listed",
        "path",
        "total_blocks",
        "type_name",
    )

    def __init__(
        self,
        path: str,
        type_name: str,
        *,
        total_blocks: int = 0,
        allocated_blocks: int = 0,
        leaked_bytes: int = 0,
        image_end_offset: int = 0,
        listed_per_code: int | None = LISTED_PER_CODE,
    ) -> None:
        self.path = path
        self.type_name = type_name
        self.findings: list[Finding] = []
        self.total_blocks = total_blocks
        self.allocated_blocks = allocated_blocks
        self.leaked_bytes = leaked_bytes
        self.image_end_offset = image_end_offset
        self.listed_per_code = listed_per_code
        self.not_listed: dict[str, int] = {}
        self._per_severity: Counter[str] = Counter()
        self._per_code: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"CheckReport(path={self.path!r}, exit_code={self.exit_code}, findings={self.findings!r})"

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

    def count_of(self, code: str) -> int:
        """Findings of ``code``, listed or not."""
        return self._per_code[code]

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


def validate_structure(meta: ImageMetadata, report: CheckReport, *, bitmaps: bool = True) -> None:
    """Add the findings on the image's own structures (not its link to a parent) to ``report``.
    ``bitmaps`` reads each block's bitmap (warnings only)."""
    _check_footers(meta, report)
    if meta.is_sparse:
        _check_header(meta, report)
        _check_blocks(meta, report, bitmaps)
    else:
        _check_fixed(meta, report)


def first_corruption(meta: ImageMetadata) -> Finding | None:
    """The first finding ``check`` would call corruption in the image's own structures."""
    report = CheckReport(meta.path, meta.type_name, listed_per_code=1)
    validate_structure(meta, report, bitmaps=False)
    return next((f for f in report.findings if f.severity == CORRUPTION), None)


def refuse_corrupt_for_writing(meta: ImageMetadata) -> None:
    """The one rule for every writer: an image that ``check`` calls corrupt is opened read-only.

    Writing through damaged structures is how readable data becomes lost data (a block written
    where a bad BAT entry points lands on the header; a compaction judged by a wrong block size
    moves the wrong bytes), so the writer stops and says what ``check`` found.
    """
    found = first_corruption(meta)
    if found is not None:
        raise CorruptImageError(
            f"{found.message}; the image is corrupt and opens only read-only (run 'vhdtool repair')"
        )


def parent_size_problem(meta: ImageMetadata, parent_size: int, parent_modified: bool) -> tuple[str, str] | None:
    """(severity, message) when a child is larger than its parent, else None.

    Past its parent's end a child reads zeros where it has no data of its own. A child grown on
    purpose (Hyper-V expands differencing disks) is legal; a parent that shrank after the link
    (its time stamp changed) took data the child read away: that is corruption of the chain.
    """
    size = meta.virtual_size
    if size <= parent_size:
        return None
    base = f"{meta.path}: the child is {size} bytes, its parent only {parent_size}: past that it reads zeros"
    if parent_modified:
        return CORRUPTION, base + " (the parent changed after the link: it was most likely shrunk under the child)"
    return WARNING, base


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
            if footer_copy_is_stale(meta):
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


def footer_copy_is_stale(meta: ImageMetadata) -> bool:
    """Whether the copy at offset 0 and the footer are both sound but differ in what a resize
    writes (an interrupted resize): qemu reads the copy's size, vhdtool and libvhdi the footer's."""
    t, c = meta.trailing, meta.copy
    if t is None or c is None or not (t.checksum_ok and c.checksum_ok):
        return False
    return build_footer(c.fields) != build_footer(t.fields) and _differ_only_in_size(c.fields, t.fields)


def refuse_stale_footer_copy(meta: ImageMetadata, edit: str) -> None:
    """An edit that rewrites the footers would align the copy with the footer and so change the
    size qemu reads; repair does that and says so, an edit must not do it silently."""
    if footer_copy_is_stale(meta):
        raise RefusedError(
            f"{meta.path}: the footer copy at offset 0 differs from the footer in its size (an interrupted "
            f"resize); {edit} would rewrite it and change the size qemu reads: run 'vhdtool repair' first"
        )


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
    if not meta.header_checksum_ok:
        report.add(CORRUPTION, "header-checksum", f"{meta.path}: dynamic header checksum mismatch")
    problem = block_size_problem(meta)
    if problem:
        report.add(CORRUPTION, "block-size", f"{meta.path}: {problem}")
    elif not table_covers(len(meta.bat), meta.block_size, meta.virtual_size):
        report.add(
            CORRUPTION,
            "bat-too-small",
            f"{meta.path}: the dynamic header's Max Table Entries field ({len(meta.bat)}) x block size "
            f"{meta.block_size} does not cover the current size of {meta.virtual_size} bytes",
        )


def block_size_problem(meta: ImageMetadata) -> str | None:
    """Why the dynamic header's Block Size field cannot be believed, or None.

    Implausible (not a power of two, below a sector, above 256 MiB), or plausible but
    contradicted by the image: with it the blocks overlap or run past the file, while the size
    the layout shows (``infer_block_size``) fits. Damage there must not be taken for damage in
    the BAT: judged by a wrong block size, every block looks bad.
    """
    bs = meta.block_size
    if valid_block_size(bs) and (fits_layout(meta, bs) or not meta.bat):
        return None
    inferred = infer_block_size(meta)
    if valid_block_size(bs) and (inferred is None or inferred[0] == bs):
        return None  # the blocks are what is wrong, not the field: the block checks say which
    what = "is not a valid block size" if not valid_block_size(bs) else "does not fit the image"
    problem = f"the dynamic header's Block Size field ({bs:#x} = {bs}) {what}"
    if inferred is None:
        return problem + "; the block size cannot be inferred from the layout"
    return problem + f"; the layout shows {inferred[0]} ({rules.human_size(inferred[0])}, from {inferred[1]})"


def infer_block_size(meta: ImageMetadata) -> tuple[int, str] | None:
    """The block size the image's layout shows, and from what; None when nothing fits.

    Candidates: the one block size for which Max Table Entries covers Current Size exactly, and
    the spacing of the data blocks (block + its bitmap, padded). A candidate counts only when
    every allocated block then lies inside the file without overlapping metadata or another block.
    """
    by_table = _block_size_from_table(meta)
    by_spacing = _block_size_from_spacing(meta)
    if by_table is not None and by_table == by_spacing and fits_layout(meta, by_table):
        return by_table, "current size / max table entries and the spacing of the data blocks"
    for bs, why in ((by_table, "current size / max table entries"), (by_spacing, "the spacing of the data blocks")):
        if bs is not None and fits_layout(meta, bs):
            return bs, why
    return None


def _block_size_from_table(meta: ImageMetadata) -> int | None:
    entries, size = len(meta.bat), meta.virtual_size
    found = [1 << shift for shift in range(9, rules.MAX_BLOCK_SIZE.bit_length()) if -(-size // (1 << shift)) == entries]
    return found[0] if len(found) == 1 else None


def _block_size_from_spacing(meta: ImageMetadata) -> int | None:
    starts = sorted({start for start, _ in stored_blocks(meta)})
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    if not gaps:
        return None
    step = min(gaps)
    top = 1 << (step.bit_length() - 1)
    for bs in (top, top >> 1):
        # block data follows its bitmap, which layouts pad to a sector (qemu, vhdtool) or 4 KiB (Windows)
        span = BlockLayout(bs).span
        if valid_block_size(bs) and span <= step <= span + DATA_ALIGNMENT:
            return bs
    return None


def fits_layout(meta: ImageMetadata, bs: int) -> bool:
    """With block size ``bs``, the BAT covers the disk and every allocated block lies inside the
    data, clear of metadata and of every other block."""
    if not table_covers(len(meta.bat), bs, meta.virtual_size):
        return False
    span = BlockLayout(bs).span
    starts = [start for start, _ in stored_blocks(meta)]
    if not starts:
        return True
    if starts[-1] + span > meta.footer_offset:
        return False
    if any(b < a + span for a, b in itertools.pairwise(starts)):
        return False
    for r in metadata_ranges(meta):
        if bisect.bisect_right(starts, r.offset - span) < bisect.bisect_left(starts, r.end):
            return False
    return True


def _check_blocks(meta: ImageMetadata, report: CheckReport, bitmaps: bool) -> None:
    bs = meta.block_size
    if report.count_of("block-size"):
        return  # judged by a wrong block size every block looks bad: the field is named instead
    layout = BlockLayout(bs)
    span = layout.span
    limit = meta.footer_offset
    report.total_blocks = len(meta.bat)
    blocks: list[tuple[int, int]] = []
    for index in allocated_indexes(meta.bat):
        report.allocated_blocks += 1
        start = layout.start(meta.bat[index])
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
    for r in metadata_ranges(meta):
        lo, hi = bisect.bisect_right(starts, r.offset - span), bisect.bisect_left(starts, r.end)
        for k in range(lo, hi):
            if not report.listing("bat-overlap-metadata"):
                report.count_only(CORRUPTION, "bat-overlap-metadata", hi - k)
                break
            start, index = blocks[k]
            report.add(
                CORRUPTION,
                "bat-overlap-metadata",
                f"{meta.path}: block {index} at offset {start} overlaps the {r.what}",
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
    if bitmaps:
        _check_bitmaps(meta, report, blocks)


def _find_leaks(meta: ImageMetadata, report: CheckReport, blocks: list[tuple[int, int]], span: int) -> None:
    """Space between blocks (or after the last one) that no BAT entry owns and that is at least
    one block long: what a crash between footer and BAT writes leaves. Smaller gaps are alignment."""
    pos = metadata_end(meta)
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


def _check_bitmaps(meta: ImageMetadata, report: CheckReport, blocks: list[tuple[int, int]]) -> None:
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
