"""A guest's disks as the runner opens and closes them.

Each image is opened writable with its whole chain; with ``--snapshot`` its throw-away overlay
(``vhdtool.ops.overlay``; the guest's disks share one scratch folder) is opened instead, so the
image itself never changes. The NBD server serves each disk as export ``vda``, ``vdb``, ...

While the guest runs, a snapshot may put new write layers on top of a disk (the layer control
endpoint opens each over the device served before it), so at the end the device to close is
whatever the export serves *then*: closing its chain closes every layer down to the image.
Opening and closing are blocking calls; the runner makes them in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vhdtool.errors import UsageError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.fixed import FixedImage
from vhdtool.format.sparse import SparseImage
from vhdtool.ops import overlay

Image = FixedImage | SparseImage


def disk_id(index: int) -> str:
    if index >= 26:
        raise UsageError("at most 26 disks (vda to vdz)")
    return "vd" + chr(ord("a") + index)


@dataclass(slots=True)
class GuestDisk:
    id: str
    """Device name in a Linux guest and NBD export name: vda, vdb, ..."""
    image: str
    """The image the user named (absolute path)."""
    device: Image
    """What the guest writes to at boot: the image, or its throw-away child with --snapshot."""


def open_disks(images: list[str], snapshot: bool) -> tuple[list[GuestDisk], str | None]:
    """Open every image; returns the disks and the scratch folder of --snapshot (None without)."""
    from vhdtool.format.chain import open_image

    scratch = overlay.make_scratch_folder() if snapshot else None
    disks: list[GuestDisk] = []
    try:
        for index, image in enumerate(images):
            name, path = disk_id(index), os.path.abspath(image)
            target = path
            if scratch is not None:
                target = overlay.create_overlay(path, overlay.scratch_path(path, scratch, name))
            disks.append(GuestDisk(name, path, open_image(target, writable=True)))
    except BaseException:
        close_disks(disks, {}, scratch)
        raise
    return disks, scratch


def close_disks(disks: list[GuestDisk], serving: Mapping[str, BlockDevice], scratch: str | None) -> None:
    """Flush and close every disk: from the device its export serves now (``serving``, by disk
    id) down its whole chain; then remove the scratch folder."""
    try:
        for disk in disks:
            serving.get(disk.id, disk.device).close_chain()
    finally:
        if scratch is not None:
            overlay.remove_scratch_folder(scratch)


def first_sector(device: BlockDevice) -> bytes:
    return device.pread(0, min(512, device.size))
