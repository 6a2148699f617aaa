"""`vhdtool check`: validate an image's metadata without trusting it.

Findings are classified like qemu-img check: corruption (exit 2), leaks only (exit 3), warnings
(exit 0). Each finding has a stable ``code`` and the location it concerns so that ``repair`` can
act on it without validating again.
"""

from __future__ import annotations

import os

from vhdtool.errors import NotVhdError, ParentError, ParentMissingError, VhdError
from vhdtool.format.chain import find_parent, parent_modified_since_link
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING
from vhdtool.format.validate import (
    CHECK_ERROR,
    CORRUPTION,
    LEAK,
    LISTED_PER_CODE,
    WARNING,
    CheckReport,
    Finding,
    parent_size_problem,
    validate_structure,
)
from vhdtool.ops.foreign import explain_not_vhd

__all__ = ["CHECK_ERROR", "CORRUPTION", "LEAK", "LISTED_PER_CODE", "WARNING", "CheckReport", "Finding", "check_image"]


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
    validate_structure(meta, report)
    if meta.disk_type == DISK_TYPE_DIFFERENCING:
        _check_parent(meta, report)
    return report


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
    modified = parent_modified_since_link(meta, parent)
    try:
        parent_size = read_metadata(parent).virtual_size
    except VhdError as e:
        report.add(CORRUPTION, "parent", f"{meta.path}: parent {parent} cannot be read: {e}")
        return
    problem = parent_size_problem(meta, parent_size, modified)
    if problem is not None:
        report.add(problem[0], "parent-smaller", problem[1])
    if modified:
        report.add(
            WARNING, "parent-timestamp", f"{meta.path}: parent {parent} was modified after the child was created"
        )
    if not any(loc.code == b"W2ru" for loc in meta.locators):
        report.add(WARNING, "parent-no-relative", f"{meta.path}: no relative (W2ru) parent locator")
