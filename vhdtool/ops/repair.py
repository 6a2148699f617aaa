"""`vhdtool repair`: act on what `check` finds, after backing the metadata up.

Two passes, each driven by ``check_image``'s findings (repair does not validate on its own):

1. the structures everything else is found through: a damaged or missing trailing footer is
   restored from the copy at offset 0 (after the data, the unreferenced rest cut, when check
   calls it a torn tail) (or its checksum recomputed when its fields are the only
   copy), the copy at offset 0 is rewritten from the trailing footer, the dynamic header's
   checksum is recomputed when its fields are sane, the reserved feature bit is set, a fixed
   disk whose file ends early gets its footer at the end of the disk;
2. checked again against the restored footer: BAT entries pointing past the end of the file or
   at metadata are cleared, then (checked again) those still overlapping another block (the
   cleared blocks read as zeros, or as the parent reads); a lost parent (or one named by no
   relative locator) is found again by UUID beside the child and the locators rewritten; leaked
   space is reclaimed by packing the blocks (``packing``).

Left alone, and reported: a block size or BAT that cannot describe the disk, an unaligned size, a
parent that is not found. Before the first write, every metadata range (both footers, header,
BAT, locator data) is saved to ``PATH.repair-backup`` (``.2``, ``.3``... if that exists): a line
naming the format, a line of JSON describing the ranges, then their bytes. Crash safety: in-place
writes in the order above, each leaving a readable image; Ctrl-C is held back until the end.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from vhdtool.errors import IoError
from vhdtool.format import rules
from vhdtool.format.batruns import allocated_indexes
from vhdtool.format.layout import sync_folder
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.rewrite import MetadataEditor, pwrite_all, round_up
from vhdtool.format.structs import (
    FEATURE_RESERVED,
    FOOTER_SIZE,
    HEADER_COOKIE,
    HEADER_SIZE,
    SECTOR,
    UNALLOCATED,
    build_footer,
    build_header,
)
from vhdtool.leftovers import temp_beside
from vhdtool.ops.check import CHECK_ERROR, CORRUPTION, LEAK, CheckReport, check_image
from vhdtool.ops.editing import edit_image, file_stamp, restamp_children
from vhdtool.ops.interrupts import deferred_interrupts
from vhdtool.ops.packing import metadata_ranges, pack

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
        result.backup = None if dry_run else write_backup(path, editor)
        with deferred_interrupts():
            _fix_structures(editor, report, result, dry_run)
            if dry_run:
                result.actions.append("then: check again and clear bad BAT entries, relink, reclaim leaks")
                return result
            if not result.unrepaired:  # blocks are only judged against trustworthy structures
                editor = MetadataEditor(editor.fd, read_metadata(path, editor.fd))
                _fix_blocks(editor, path, result)
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
    if rewrite_trailing:
        at = _trailing_position(meta)
        if meta.footer_source == "copy":
            result.actions.append(f"restored the footer at offset {at} from the copy at offset 0")
        elif "footer-checksum" in codes:
            result.actions.append(f"recomputed the checksum of the footer at offset {at}")
        if not dry_run:
            pwrite_all(editor.fd, at, build_footer(footer))
            editor.sync()
            if meta.torn_tail is not None and at + FOOTER_SIZE < meta.file_size:
                # an interrupted growth: past the restored footer nothing is referenced
                os.ftruncate(editor.fd, at + FOOTER_SIZE)
                editor.sync()
                result.actions.append(f"cut {meta.file_size - at - FOOTER_SIZE} unreferenced bytes after it")
    if "fixed-truncated" in codes:
        _move_fixed_footer(editor, footer, result, dry_run)
    copy_codes = {
        "footer-copy-missing",
        "footer-copy-checksum",
        "footer-copy-differs",
        "footer-copy-stale",
        "footer-features",
    }
    if meta.is_sparse and (codes & copy_codes or (meta.footer_source != "copy" and rewrite_trailing)):
        result.actions.append("rewrote the footer copy at offset 0 from the footer")
        if not dry_run:
            pwrite_all(editor.fd, 0, build_footer(footer))
            editor.sync()
    if "header-checksum" in codes:
        problem = _header_problem(meta)
        if problem:
            result.unrepaired.append(f"{meta.path}: dynamic header not repaired: {problem}")
        else:
            result.actions.append("recomputed the dynamic header checksum")
            if not dry_run:
                pwrite_all(editor.fd, int(footer.data_offset), build_header(meta.header))
                editor.sync()


def _move_fixed_footer(editor: MetadataEditor, footer: Container, result: Repaired, dry_run: bool) -> None:
    """A fixed disk's file ends before the disk does: the footer goes to the end of the disk (the
    missing part then reads as zeros), and its old place, now disk space, is zeroed."""
    old, size = editor.meta.footer_offset, editor.meta.virtual_size
    result.actions.append(f"moved the footer from offset {old} to {size}: the missing end of the disk reads as zeros")
    if dry_run:
        return
    pwrite_all(editor.fd, size, build_footer(footer))
    editor.sync()
    pwrite_all(editor.fd, old, bytes(min(FOOTER_SIZE, size - old)))
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
    span = rules.bitmap_bytes(meta.block_size) + meta.block_size
    ends = [end for _, end in metadata_ranges(meta)]
    bat = meta.bat
    ends += [bat[i] * SECTOR + span for i in allocated_indexes(bat) if bat[i] * SECTOR < last]
    return max(round_up(max(ends)), last)


def _header_problem(meta: ImageMetadata) -> str | None:
    """Why the header's fields cannot be trusted, or None (then only the checksum is wrong)."""
    h = meta.header
    if h is None or bytes(h.cookie) != HEADER_COOKIE:
        return "no 'cxsparse' cookie"
    bs = int(h.block_size)
    if bs < SECTOR or bs & (bs - 1) or bs > 256 * rules.MiB:
        return f"block size {bs} is not valid"
    if int(h.max_table_entries) * bs < meta.virtual_size:
        return f"BAT of {h.max_table_entries} entries does not cover the disk"
    if int(h.table_offset) < FOOTER_SIZE + HEADER_SIZE // 2 or int(h.table_offset) % SECTOR:
        return f"BAT offset {h.table_offset} is not valid"
    return None


# -- pass 2: BAT, parent, leaks -----------------------------------------------------------------


RELINK_CODES = ("parent", "parent-missing", "parent-no-locator", "parent-no-relative")
REASONS = {
    "bat-outside": "past the end of the file",
    "bat-overlap-metadata": "at metadata",
    "bat-overlap": "into another block",
}


def _fix_blocks(editor: MetadataEditor, path: str, result: Repaired) -> None:
    meta = editor.meta
    report = check_image(path, list_all=True)
    cleared = False
    # entries pointing outside or at metadata first: an overlap with one of those is its fault alone
    for codes in (("bat-outside", "bat-overlap-metadata"), ("bat-overlap",)):
        bad = {f.block: f.code for f in report.findings if f.code in codes and f.block is not None}
        if not bad:
            continue
        editor.set_bat(dict.fromkeys(bad, UNALLOCATED))
        editor.sync()
        cleared = True
        what = "from the parent" if meta.parent_uuid else "as zeros"
        for block, code in sorted(bad.items()):
            result.actions.append(f"cleared BAT entry {block} (pointed {REASONS[code]}); its range now reads {what}")
        report = check_image(path, list_all=True)
    if any(f.code in RELINK_CODES for f in report.findings):
        _relink(editor, result)
    if cleared or any(f.severity == LEAK for f in report.findings):
        packed = pack(editor, meta.block_size)
        reclaimed = packed.old_file_size - packed.new_file_size
        result.actions.append(f"reclaimed {reclaimed} bytes of leaked space ({packed.moved_blocks} block(s) moved)")


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
        ranges += [(start, end - start) for start, end in metadata_ranges(meta)]
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
