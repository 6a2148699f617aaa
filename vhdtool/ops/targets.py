"""What a disk must be for the platforms ``--for`` names, and the reasons one is not.

Azure takes fixed VHDs only, whose virtual size is a whole number of MiB, with the footer right
after the data (the file is the virtual size plus 512 bytes). Hyper-V's New-VHD makes dynamic and
fixed VHDs with 512 KiB or 2 MiB blocks.
"""

from __future__ import annotations

import os

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.metadata import read_metadata
from vhdtool.format.structs import FOOTER_SIZE

TARGETS = ("azure", "hyper-v")
HYPER_V_BLOCK_SIZES = (512 * rules.KiB, 2 * rules.MiB)


def hyper_v_warning(block_size: int | None) -> str | None:
    """A warning when ``block_size`` is not one Hyper-V's New-VHD offers."""
    if block_size is None or block_size in HYPER_V_BLOCK_SIZES:
        return None
    return f"block size {block_size} is not one Hyper-V offers (512 KiB or 2 MiB); Hyper-V may refuse the disk"


def unsuitable(path: str | os.PathLike[str], target: str) -> list[str]:
    """Why ``path`` is not a disk ``target`` takes (empty: it takes it). Damage is check's
    business; this judges the layout only."""
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r} (choose {', '.join(TARGETS)})")
    meta = read_metadata(path)
    reasons: list[str] = []
    size = meta.virtual_size
    if target == "azure":
        if meta.type_name != "fixed":
            reasons.append(f"a {meta.type_name} disk: Azure takes fixed VHDs only (vhdtool convert --for azure)")
        if size % rules.MiB:
            reasons.append(f"virtual size {size} is not a whole number of MiB (Azure requires one)")
        if meta.type_name == "fixed" and meta.file_size != size + FOOTER_SIZE:
            reasons.append(f"file size {meta.file_size} is not the virtual size plus a 512-byte footer")
    else:
        if meta.is_sparse and meta.header is not None and meta.block_size not in HYPER_V_BLOCK_SIZES:
            reasons.append(f"block size {meta.block_size} is not one Hyper-V offers (512 KiB or 2 MiB)")
        if size > rules.MAX_DYNAMIC_SIZE:
            reasons.append(f"virtual size {size} exceeds the 2040 GiB a VHD holds in Hyper-V")
    if meta.footer.saved_state:
        reasons.append("the saved-state flag is set")
    return reasons
