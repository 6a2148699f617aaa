"""Opening one differencing image over a parent device the caller already holds.

``open_image`` resolves a chain by itself and opens every parent read-only. Merging needs the
same chain with one ancestor opened for writing instead; this rebuilds a layer on top of any
device, after checking that the device is the parent the layer records (by UUID).
"""

from __future__ import annotations

import os
import uuid

from vhdtool.errors import ParentError, UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.lock import lock_image
from vhdtool.format.metadata import read_metadata
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING
from vhdtool.format.validate import refuse_corrupt_for_writing


def open_over(
    path: str | os.PathLike[str], parent: BlockDevice, parent_uuid: uuid.UUID, writable: bool = False
) -> SparseImage:
    """Open the differencing image ``path`` with ``parent`` below it: read-only with a shared lock,
    or for writing with an exclusive one (a new write layer over a device already being served).

    ``parent_uuid`` is the UUID of the image ``parent`` stands for; the layer must name it.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as e:
        raise VhdError(f"{path}: cannot open: {e.strerror}") from None
    try:
        meta = read_metadata(path, fd)
        if meta.disk_type != DISK_TYPE_DIFFERENCING:
            raise UsageError(f"{path}: is a {meta.type_name} disk, not a differencing disk")
        if meta.parent_uuid != parent_uuid:
            raise ParentError(f"{path}: expects parent UUID {meta.parent_uuid}, {parent.path} has {parent_uuid}")
        if writable:
            refuse_corrupt_for_writing(meta)
        lock_image(fd, path, exclusive=writable)
        return SparseImage(meta, fd, writable, parent)
    except BaseException:
        os.close(fd)
        raise
