"""`vhdtool repair`: act on what `check` finds, after backing the metadata up.

Two passes, each driven by ``check_image``'s findings (repair does not validate on its own):

1. the structures everything else is found through: a damaged or missing trailing footer is
   restored from the copy at offset 0 (after the data, the unreferenced rest cut, when check
   calls it a torn tail) (or its checksum recomputed when its fields are the only
   copy), the copy at offset 0 is rewritten from the trailing footer, the dynamic header's
   checksum is recomputed when its fields are sane, a Block Size field that does not fit the
   image is set to what the layout shows (``format.validate.infer_block_size``; nothing is
   guessed: without an inference the repair stops here), the reserved feature bit is set, a fixed
   disk whose file ends early gets its footer at the end of the disk;
2. checked again against the restored footer: BAT entries pointing past the end of the file or
   at metadata are cleared, then (checked again) those still overlapping another block (the
   cleared blocks read as zeros, or as the parent reads); a lost parent (or one named by no
   relative locator) is found again by UUID beside the child and the locators rewritten; leaked
   space is reclaimed by packing the blocks (``packing``). What this pass will do is worked out
   on the metadata in memory first (``plan_blocks``) and listed entry by entry, range by range and
   leak by leak, the same in a dry run; when every block stored in the file would be cleared the
   repair stops instead (damage in what the blocks are judged by, not in the blocks).

Left alone, and reported: a block size nothing in the layout shows, a BAT that cannot describe
the disk, an unaligned size, a parent that is not found, two footers that differ where neither
fits the image (of two that differ, the one that fits is kept). Before the first write, every
metadata range (both footers, header, BAT, locator data) is saved to ``PATH.repair-backup``
(``.2``, ``.3``... if that exists): a line naming the format, a line of JSON describing the
ranges, then their bytes. Crash safety: in-place writes in the order above, each leaving a
readable image; Ctrl-C is held back until the end.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from vhdtool.errors import CorruptImageError, IoError
from vhdtool.format import rules
from vhdtool.format.layout import sync_folder
from vhdtool.format.metadata import FooterRead, ImageMetadata, read_metadata
from vhdtool.format.rewrite import MetadataEditor
from vhdtool.format.rules import SECTOR
from vhdtool.format.sparselayout import (
    HEADER_OFFSET,
    BlockLayout,
    metadata_end,
    metadata_ranges,
    round_up,
    stored_blocks,
    table_covers,
    valid_block_size,
)
from vhdtool.format.structs import FEATURE_RESERVED, FOOTER_SIZE, HEADER_COOKIE, UNALLOCATED, build_footer
from vhdtool.format.validate import block_size_problem, infer_block_size, validate_structure
from vhdtool.leftovers import temp_beside
from vhdtool.ops.check import CHECK_ERROR, CORRUPTION, LEAK, CheckReport, Finding, check_image
from vhdtool.ops.editing import edit_image, file_stamp, restamp_children
from vhdtool.ops.interrupts import deferred_interrupts
from vhdtool.ops.packing import pack

BACKUP_MAGIC = b"VHDTOOL-REPAIR-BACKUP 1\n"


@dataclass(slots=True)
class Repaired:
    path: str
    actions: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    backup: str | None = None
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        """0 when the image checks clean now (or nothing was needed), 2 when damage remains."""
        return 2 if self.unrepaired else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "filename": self.path,
            "actions": self.actions,
            "unrepaired": self.unrepaired,
            "backup": self.backup,
            "dry-run": self.dry_run,
        }


def repair(path: str | os.PathLike[str], *, dry_run: bool = False) -> Repaired:
    """Repair what ``check`` reports on ``path``; ``dry_run`` only lists what would be done."""
    path = os.fspath(path)
    result = Repaired(path, dry_run=dry_run)
    report = check_image(path, list_all=True)
    if not _needs_repair(report):
        return result
    before = file_stamp(path)
    with edit_image(path, damaged_ok=True) as editor:
        cut = cut_blocks(editor.meta)  # judged before pass 1 puts a footer after them
        relink = any(f.code in RELINK_CODES for f in report.findings)
        if not dry_run:
            # the whole plan first, in memory: a refusal of pass 2 (every block looks bad) comes
            # before pass 1 has written a byte
            trial = Repaired(path, dry_run=True)
            _fix_structures(editor, report, trial, True)
            if not trial.unrepaired:
                _plan_dry_run(editor.meta, report, relink, cut, trial)
        result.backup = None if dry_run else write_backup(path, editor)
        with deferred_interrupts():
            _fix_structures(editor, report, result, dry_run)
            # blocks are only judged against trustworthy structures
            if dry_run and not result.unrepaired:
                _plan_dry_run(editor.meta, report, relink, cut, result)
            elif not result.unrepaired:
                editor = MetadataEditor(editor.fd, read_metadata(path, editor.fd))
                _fix_blocks(editor, path, result, cut)
    if dry_run:
        if not result.actions and not result.unrepaired:  # damage that no step of repair touches
            result.unrepaired = [f.message for f in report.findings if f.severity in (CORRUPTION, LEAK)]
        return result
    restamp_children(path, [os.path.dirname(os.path.abspath(path))], before)
    final = check_image(path)  # what is left is reported, so listed the way check lists it
    result.unrepaired = [f.message for f in final.findings if f.severity in (CORRUPTION, LEAK, CHECK_ERROR)]
    result.unrepaired += [f"... and {n} more ({code})" for code, n in final.not_listed.items()]
    return result


def _needs_repair(report: CheckReport) -> bool:
    """Corruption or leaks; or one of the warnings repair fixes (reserved bit, no relative locator)."""
    return report.exit_code != 0 or any(f.code in ("footer-features", "parent-no-relative") for f in report.findings)


# -- pass 1: footers and header -----------------------------------------------------------------


def _fix_structures(editor: MetadataEditor, report: CheckReport, result: Repaired, dry_run: bool) -> None:
    meta = editor.meta
    codes = {f.code for f in report.findings}
    footer = Container(meta.footer)
    if "footer-features" in codes:
        footer.features |= FEATURE_RESERVED
        result.actions.append(f"set the reserved feature bit {FEATURE_RESERVED:#x} in the footer")
    rewrite_trailing = bool(codes & {"footer-missing", "torn-tail", "footer-checksum", "footer-features"})
    from_copy = meta.footer_source == "copy"
    differ = {"footer-copy-differs", "footer-copy-stale"}  # stale: they differ only in size fields
    if codes & differ and meta.copy is not None:
        # which of two good-checksum footers to keep: the one whose fields fit the image (qemu
        # reads the copy, everyone else the footer: keeping an insane one loses the other's readers)
        mine, theirs = _footer_problem(meta, meta.footer), _footer_problem(meta, meta.copy.fields)
        if mine and theirs:
            result.unrepaired.append(
                f"{meta.path}: the footer and its copy at offset 0 differ and neither fits the image "
                f"(footer: {mine}; copy: {theirs}); neither rewritten"
            )
            return
        if mine or _copy_keeps_qemu_size(meta.footer, meta.copy.fields):
            footer, rewrite_trailing, from_copy = Container(meta.copy.fields), True, True
            codes -= differ
    if rewrite_trailing:
        at = _trailing_position(meta)
        if from_copy:
            problem = _footer_problem(meta, meta.footer) or "CHS geometry or creator changes the size qemu reads"
            why = f" (the footer's {problem})" if meta.footer_source != "copy" else ""
            result.actions.append(f"restored the footer at offset {at} from the copy at offset 0{why}")
        elif "footer-checksum" in codes:
            result.actions.append(f"recomputed the checksum of the footer at offset {at}")
        if not dry_run:
            editor.put_footer(at, footer)
            editor.sync()
            if meta.torn_tail is not None and at + FOOTER_SIZE < meta.file_size:
                # an interrupted growth: past the restored footer nothing is referenced
                editor.cut(at + FOOTER_SIZE)
                editor.sync()
                result.actions.append(f"cut {meta.file_size - at - FOOTER_SIZE} unreferenced bytes after it")
    # an unaligned size: the field is what is damaged, not the file; fit it to the bytes before
    # the footer (what qemu reads too) rather than move the footer to an offset no reader accepts
    if "size-unaligned" in codes and not meta.is_sparse and _fit_fixed_size_to_footer(editor, footer, result, dry_run):
        codes.discard("fixed-truncated")
    if "fixed-truncated" in codes:
        _move_fixed_footer(editor, footer, result, dry_run)
    copy_codes = {
        "footer-copy-missing",
        "footer-copy-checksum",
        "footer-copy-differs",
        "footer-copy-stale",
        "footer-features",
    }
    if meta.is_sparse and (codes & copy_codes or (not from_copy and rewrite_trailing)):
        result.actions.append("rewrote the footer copy at offset 0 from the footer")
        if not dry_run:
            editor.put_footer_copy(footer)
            editor.sync()
    if "block-size" in codes:
        _fix_block_size(editor, result, dry_run)
    elif "header-checksum" in codes:
        problem = _header_problem(meta)
        if problem:
            result.unrepaired.append(f"{meta.path}: dynamic header not repaired: {problem}")
        else:
            result.actions.append("recomputed the dynamic header checksum")
            if not dry_run:
                editor.set_header()  # the fields as they are, under a fresh checksum
                editor.sync()


def _fix_block_size(editor: MetadataEditor, result: Repaired, dry_run: bool) -> None:
    """A Block Size field that does not fit the image is set to the size the layout shows, or the
    repair stops: judged by a wrong block size every block looks bad, and clearing them all would
    throw the disk's data away."""
    meta = editor.meta
    inferred = infer_block_size(meta)
    if inferred is None:
        result.unrepaired.append(
            f"{meta.path}: {block_size_problem(meta)}; nothing repaired (no block is cleared on a guess)"
        )
        return
    bs, why = inferred
    result.actions.append(
        f"set the dynamic header's Block Size field from {meta.block_size} to {bs} (inferred from {why})"
    )
    if not dry_run:
        editor.set_header(block_size=bs)
        editor.sync()


def _footer_problem(meta: ImageMetadata, fields: Container) -> str | None:
    """Why a footer's fields cannot describe this image, or None."""
    size = int(fields.current_size)
    if size % SECTOR:
        return f"current size {size} is not a multiple of 512"
    if size > rules.MAX_DYNAMIC_SIZE:
        return f"current size {size} exceeds 2040 GiB"
    if not _table_holds(meta, size):
        return f"current size {size} is more than the BAT covers"
    geometry = rules.Geometry(fields.cylinders, fields.heads, fields.sectors_per_track)
    qemu_size = rules.qemu72_virtual_size(bytes(fields.creator_application), geometry, size)
    if not _table_holds(meta, qemu_size):
        # qemu sizes the disk by its CHS geometry (most creators) and refuses one the BAT cannot hold
        return f"CHS geometry gives {qemu_size} bytes (what qemu reads), more than the BAT covers"
    return None


def _table_holds(meta: ImageMetadata, size: int) -> bool:
    """Whether the BAT has entries for a disk of ``size`` bytes (always, for a fixed disk)."""
    if not meta.is_sparse or meta.bat is None or meta.block_size <= 0:
        return True
    return table_covers(len(meta.bat), meta.block_size, size)


def _copy_keeps_qemu_size(footer: Container, copy: Container) -> bool:
    """Two footers that differ only in what decides the size qemu reads (CHS geometry, creator):
    qemu reads the copy, every other reader Current Size, which both share; the copy keeps both."""
    size_rule = ("cylinders", "heads", "sectors_per_track", "creator_application", "checksum")
    a, b = Container(footer), Container(copy)
    for name in size_rule:
        a[name] = b[name]
    if build_footer(a) != build_footer(b):
        return False

    def qemu_size(f: Container) -> int:
        geometry = rules.Geometry(f.cylinders, f.heads, f.sectors_per_track)
        return rules.qemu72_virtual_size(bytes(f.creator_application), geometry, int(f.current_size))

    return qemu_size(footer) != qemu_size(copy)


def _fit_fixed_size_to_footer(editor: MetadataEditor, footer: Container, result: Repaired, dry_run: bool) -> bool:
    """A fixed disk whose Current Size is not whole sectors: it becomes the footer's offset."""
    meta = editor.meta
    at = meta.footer_offset
    if at % SECTOR or at > rules.MAX_FIXED_SIZE:
        result.unrepaired.append(
            f"{meta.path}: current size {meta.virtual_size} is not a multiple of 512 and the footer at {at} "
            "gives no size either; nothing repaired"
        )
        return False
    result.actions.append(
        f"set the footer's Current Size from {meta.virtual_size} to {at} (the bytes before the footer)"
    )
    footer.current_size = at
    if not dry_run:
        editor.put_footer(at, footer)
        editor.sync()
    return True


def _move_fixed_footer(editor: MetadataEditor, footer: Container, result: Repaired, dry_run: bool) -> None:
    """A fixed disk's file ends before the disk does: the footer goes to the end of the disk (the
    missing part then reads as zeros), and its old place, now disk space, is zeroed."""
    old, size = editor.meta.footer_offset, editor.meta.virtual_size
    result.actions.append(f"moved the footer from offset {old} to {size}")
    result.actions.append(
        f"zero disk bytes {old}-{min(size, old + FOOTER_SIZE) - 1} (where the footer was); disk bytes "
        f"{old}-{size - 1} were missing from the file and read as zeros"
    )
    if dry_run:
        return
    editor.put_footer(size, footer)
    editor.sync()
    editor.zero(old, min(FOOTER_SIZE, size - old))
    editor.sync()


def _trailing_position(meta: ImageMetadata) -> int:
    """Where the trailing footer belongs: where it is, or (missing) in the last sector of the file,
    or after the last structure when the file was cut short."""
    if meta.trailing is not None:
        return meta.trailing.offset
    if meta.torn_tail is not None:
        return meta.torn_tail  # right after the referenced data (check judged everything else sound)
    last = meta.file_size - FOOTER_SIZE
    if not meta.is_sparse:
        return max(last, meta.virtual_size)
    span = BlockLayout(meta.block_size).span
    ends = [metadata_end(meta)] + [start + span for start, _ in stored_blocks(meta) if start < last]
    return max(round_up(max(ends)), last)


def _header_problem(meta: ImageMetadata) -> str | None:
    """Why the header's fields cannot be trusted, or None (then only the checksum is wrong)."""
    h = meta.header
    if h is None or bytes(h.cookie) != HEADER_COOKIE:
        return "no 'cxsparse' cookie"
    bs = int(h.block_size)
    if not valid_block_size(bs):
        return f"block size {bs} is not valid"
    if not table_covers(int(h.max_table_entries), bs, meta.virtual_size):
        return f"BAT of {h.max_table_entries} entries does not cover the disk"
    if int(h.table_offset) < HEADER_OFFSET + SECTOR or int(h.table_offset) % SECTOR:
        return f"BAT offset {h.table_offset} is not valid"
    return None


# -- pass 2: BAT, parent, leaks -----------------------------------------------------------------


RELINK_CODES = ("parent", "parent-missing", "parent-no-locator", "parent-no-relative")
REASONS = {
    "bat-outside": "past the end of the file",
    "bat-overlap-metadata": "at metadata",
    "bat-overlap": "into another block",
}


@dataclass(slots=True)
class BlockPlan:
    """What pass 2 will do, worked out on the metadata in memory before anything is written, so
    that a dry run and the real run list the same entries, ranges and leaks."""

    rounds: list[dict[int, str]] = field(default_factory=list)
    """BAT entries to clear, {block: finding code}: those pointing outside or at metadata first
    (an overlap with one of those is its fault alone), then those still overlapping another."""
    cut_blocks: list[tuple[int, int, int]] = field(default_factory=list)
    """(block, first, end) disk byte ranges of blocks cut short by the end of the file."""
    leaks: list[Finding] = field(default_factory=list)
    relink: bool = False

    @property
    def cleared(self) -> dict[int, str]:
        return {block: code for one in self.rounds for block, code in one.items()}


def plan_blocks(meta: ImageMetadata, relink: bool) -> BlockPlan:
    plan = BlockPlan(relink=relink)
    if not meta.is_sparse:
        return plan
    trial = meta._replace(bat=array("I", meta.bat), warnings=[])
    for codes in (("bat-outside", "bat-overlap-metadata"), ("bat-overlap",)):
        report = CheckReport(meta.path, meta.type_name, listed_per_code=None)
        validate_structure(trial, report, bitmaps=False)
        bad = {f.block: f.code for f in report.findings if f.code in codes and f.block is not None}
        if bad:
            plan.rounds.append(bad)
            for block in bad:
                trial.bat[block] = UNALLOCATED
    report = CheckReport(meta.path, meta.type_name, listed_per_code=None)
    validate_structure(trial, report, bitmaps=False)
    plan.leaks = [f for f in report.findings if f.severity == LEAK and f.code == "leak"]
    return plan


def describe_plan(meta: ImageMetadata, plan: BlockPlan) -> list[str]:
    """One line per BAT entry cleared, byte range zeroed and leak dropped."""
    bs = meta.block_size
    what = "from the parent" if meta.parent_uuid else "as zeros"
    lines = [
        f"cleared BAT entry {block} (pointed {REASONS[code]}); disk bytes {block * bs}-{(block + 1) * bs - 1} "
        f"now read {what}"
        for block, code in sorted(plan.cleared.items())
    ]
    lines += [
        f"block {block} was cut short by the end of the file: disk bytes {first}-{end - 1} read {what}"
        for block, first, end in plan.cut_blocks
    ]
    if plan.relink:
        lines.append("find the parent by UUID beside the child and rewrite the locators")
    lines += [f"dropped leaked space: {f.length} bytes at file offset {f.offset}" for f in plan.leaks]
    return lines


def cut_blocks(meta: ImageMetadata) -> list[tuple[int, int, int]]:
    """Blocks that start inside a file whose end (footer lost) cut them: the restored footer goes
    after them and the missing part reads as zeros, or from the parent."""
    if meta.trailing is not None or meta.torn_tail is not None or not meta.is_sparse:
        return []
    layout = BlockLayout(meta.block_size)
    bs = layout.block_size
    out = []
    for start, index in stored_blocks(meta):
        if start >= meta.file_size - FOOTER_SIZE or start + layout.span <= meta.file_size:
            continue
        kept = max(0, meta.file_size - start - layout.bitmap_size)
        out.append((index, index * bs + kept, (index + 1) * bs))
    return sorted(out)


def _plan_dry_run(
    meta: ImageMetadata, report: CheckReport, relink: bool, cut: list[tuple[int, int, int]], result: Repaired
) -> None:
    """Pass 2's plan for the image as pass 1 would leave it (footer in place, block size set)."""
    plan = BlockPlan(relink=relink)
    if meta.is_sparse:
        codes = {f.code for f in report.findings}
        at = _trailing_position(meta)
        header = Container(meta.header)
        inferred = infer_block_size(meta) if "block-size" in codes else None
        if inferred is not None:
            header.block_size = inferred[0]
        end = at + FOOTER_SIZE if meta.torn_tail is not None else max(meta.file_size, at + FOOTER_SIZE)
        meta = meta._replace(
            trailing=FooterRead(meta.footer, at, True),
            footer_source="trailing",
            torn_tail=None,
            header=header,
            file_size=end,
        )
        plan = plan_blocks(meta, relink)
        plan.cut_blocks = cut
        _refuse_clearing_everything(meta, plan)
    result.actions += describe_plan(meta, plan)


def _fix_blocks(editor: MetadataEditor, path: str, result: Repaired, cut: list[tuple[int, int, int]]) -> None:
    meta = editor.meta
    report = check_image(path, list_all=True)
    plan = plan_blocks(meta, any(f.code in RELINK_CODES for f in report.findings))
    plan.cut_blocks = cut
    _refuse_clearing_everything(meta, plan)
    result.actions += describe_plan(meta, plan)
    for bad in plan.rounds:
        editor.set_bat(dict.fromkeys(bad, UNALLOCATED))
        editor.sync()
    if plan.relink:
        _relink(editor, result)
    if plan.rounds or plan.leaks:
        packed = pack(editor, meta.block_size)
        reclaimed = packed.old_file_size - packed.new_file_size
        result.actions.append(f"reclaimed {reclaimed} bytes of leaked space ({packed.moved_blocks} block(s) moved)")


def _refuse_clearing_everything(meta: ImageMetadata, plan: BlockPlan) -> None:
    """Every block that starts inside the file bad at once is not damage in the blocks but in
    what they are judged by (block size, BAT offset, footer): stop rather than throw the disk's
    data away. Entries pointing past the end of the file hold nothing; clearing them loses nothing."""
    inside = {index for start, index in stored_blocks(meta) if start < meta.file_size} if meta.bat else set()
    if len(inside) >= 2 and inside <= plan.cleared.keys():
        raise CorruptImageError(
            f"{meta.path}: all {len(inside)} blocks stored in the file look bad, which points at damage in "
            "the header or BAT rather than in the blocks; nothing changed"
        )


def _relink(editor: MetadataEditor, result: Repaired) -> None:
    from vhdtool.errors import ParentError
    from vhdtool.format.parentlink import point_at_parent
    from vhdtool.ops.relink import locate_parent

    meta = editor.meta
    try:
        parent = locate_parent(meta)
    except ParentError as e:
        result.unrepaired.append(str(e))
        return
    assert editor.header is not None
    point_at_parent(
        editor, meta.path, parent, bytes(editor.header.parent_unique_id), int(editor.header.parent_timestamp)
    )
    result.actions.append(f"found the parent {parent} by UUID and rewrote the locators")


# -- backup ---------------------------------------------------------------------------------------


def write_backup(path: str, editor: MetadataEditor) -> str:
    """Save every metadata range of the image (and its last sector) before anything changes."""
    meta, fd = editor.meta, editor.fd
    size = meta.file_size
    ranges = [(0, min(FOOTER_SIZE, size)), (max(0, size - FOOTER_SIZE), min(FOOTER_SIZE, size))]
    if meta.is_sparse:
        ranges += [(r.offset, r.length) for r in metadata_ranges(meta)]
    ranges = sorted({(o, min(n, size - o)) for o, n in ranges if 0 <= o < size})
    base = path + ".repair-backup"
    doc = {"path": os.path.abspath(path), "file-size": size, "ranges": [[o, n] for o, n in ranges]}
    tmp = temp_beside(base)  # written whole under a temporary name: a full disk or a kill leaves no partial backup
    try:
        with open(tmp, "xb") as f:
            f.write(BACKUP_MAGIC + json.dumps(doc).encode() + b"\n")
            for offset, length in ranges:
                f.write(os.pread(fd, length, offset))
            f.flush()
            os.fsync(f.fileno())
        backup = _free_name(base)
        os.rename(tmp, backup)
        sync_folder(os.path.dirname(os.path.abspath(backup)))
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise IoError(f"{base}: cannot write the repair backup: {e.strerror or e}; nothing repaired") from None
    return backup


def _free_name(base: str) -> str:
    name, n = base, 1
    while os.path.lexists(name):
        n += 1
        name = f"{base}.{n}"
    return name
