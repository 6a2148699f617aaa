"""check, repair and compact judge an image's metadata by one rule (``format.sparselayout``).

The case where they used to disagree: a parent locator whose data is the last thing in the file
before the footer, and whose size is not whole sectors (no data space at all, so readers go by
the data length, or a data space in bytes that is not a multiple of 512). With the footer torn
off, check must name the end of the data where repair puts the footer back, sector aligned, and
compact must find nothing more to cut or move afterwards; the locator's bytes stay as they were.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import patch_header, vhdiinfo_size
from tests.helpers import vhdtool as cli
from vhdtool.format.rules import MiB
from vhdtool.ops.check import check_image
from vhdtool.ops.compact import compact
from vhdtool.ops.repair import repair

LOCATOR_ENTRIES_AT = 576
"""Byte of the dynamic header where the eight 24-byte parent locator entries start."""
W2KU_SLOT = 1
"""vhdtool writes the relative locator in slot 0 and the absolute one (last in the file) in slot 1."""


def _locator(child: Path, slot: int) -> tuple[int, int, int]:
    """(data space field, data length, data offset) of a locator entry."""
    with open(child, "rb") as f:
        f.seek(512 + LOCATOR_ENTRIES_AT + 24 * slot + 4)
        space, length, _, offset = struct.unpack(">IIIQ", f.read(20))
    return space, length, offset


@pytest.fixture
def child(tmp_path: Path) -> Path:
    # a deep folder: the absolute locator's UTF-16 path is then longer than a sector
    deep = tmp_path.joinpath(*["a-rather-long-folder-name-for-the-parent"] * 8)
    deep.mkdir(parents=True)
    base = deep / "base.vhd"
    vhdtool.create(base, size=8 * MiB)
    out = tmp_path / "child.vhd"
    vhdtool.create(out, parent=base)
    return out


@pytest.mark.parametrize(
    "space_of",
    [
        pytest.param(lambda length: 0, id="no-data-space"),
        pytest.param(lambda length: length + 1, id="odd-sized-data-space"),
    ],
)
def test_check_repair_and_compact_agree_on_locator_data(child: Path, space_of) -> None:
    _, length, offset = _locator(child, W2KU_SLOT)
    assert length > 512 and length % 512 and offset % 512 == 0  # what makes the case
    footer_at = os.path.getsize(child) - 512
    assert offset + length <= footer_at  # the locator data is the last structure
    space = space_of(length)
    patch_header(child, LOCATOR_ENTRIES_AT + 24 * W2KU_SLOT + 4, space.to_bytes(4, "big"))
    data_end = offset + -(-max(space, length) // 512) * 512
    assert data_end == footer_at
    with open(child, "rb") as f:
        locator_data = os.pread(f.fileno(), length, offset)
    assert check_image(child).exit_code == 0
    os.truncate(child, footer_at)  # an interrupted growth: the footer at the end is gone

    report = check_image(child, list_all=True)
    assert report.exit_code == 3, [f.message for f in report.findings]
    torn = [f for f in report.findings if f.code == "torn-tail"]
    assert len(torn) == 1 and torn[0].offset == data_end  # sector aligned, after all the data

    done = repair(child)
    assert done.exit_code == 0, done.unrepaired
    assert os.path.getsize(child) == data_end + 512  # the footer where check said the data ends
    assert check_image(child).exit_code == 0

    packed = compact(child)
    assert packed.old_file_size == packed.new_file_size == data_end + 512  # nothing more to cut
    assert check_image(child).exit_code == 0
    with open(child, "rb") as f:
        assert os.pread(f.fileno(), length, offset) == locator_data
    assert _locator(child, W2KU_SLOT) == (space, length, offset)
    # the parent is still found through the locators, and libvhdi reads the child and its size
    assert cli("info", str(child)).returncode == 0
    assert vhdiinfo_size(child) == 8 * MiB
