"""Creating images: the policy (defaults, parents, sizes) over format.layout."""

from __future__ import annotations

import os
from typing import NamedTuple

from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.layout import ParentLink, create_fixed, create_sparse, new_unique_id

TYPES = ("dynamic", "fixed", "differencing")


class Created(NamedTuple):
    path: str
    type: str
    size: int
    block_size: int | None
    parent: str | None


def create(
    path: str | os.PathLike[str],
    size: int | str | None = None,
    type: str | None = None,
    parent: str | os.PathLike[str] | None = None,
    block_size: int | str | None = None,
    *,
    unique_id: bytes | None = None,
    timestamp: int | None = None,
    overwrite: bool = False,
    sync: bool = False,
) -> Created:
    """Create a VHD. Defaults: a 127 GiB dynamic disk with 2 MiB blocks.

    ``parent`` makes a differencing disk (type implied, size from the parent). ``unique_id``
    (16 bytes) and ``timestamp`` (Unix time) make the output reproducible. Like qemu-img create,
    a new file is left to the page cache unless ``sync`` flushes it (and its folder) before it is
    renamed into place; a file it replaces (``overwrite``) is always flushed first.
    """
    path = os.fspath(path)
    if isinstance(size, str):
        size = rules.parse_absolute_size(size)
    if isinstance(block_size, str):
        block_size = rules.parse_absolute_size(block_size, "block size")
    disk_type = type or ("differencing" if parent is not None else "dynamic")
    if disk_type not in TYPES:
        raise UsageError(f"unknown disk type {disk_type!r} (choose dynamic, fixed or differencing)")
    uid = unique_id or new_unique_id()
    if len(uid) != 16:
        raise UsageError("a unique id has 16 bytes")
    stamp = rules.to_vhd_timestamp(timestamp)
    if parent is not None or disk_type == "differencing":
        return _create_child(path, parent, disk_type, size, block_size, uid, stamp, overwrite, sync)
    size = rules.DEFAULT_SIZE if size is None else int(size)
    rules.validate_virtual_size(size, disk_type)
    if disk_type == "fixed":
        if block_size is not None:
            raise UsageError("--block-size applies to dynamic and differencing disks only")
        create_fixed(path, size, uid, stamp, overwrite, sync=sync)
        return Created(path, "fixed", size, None, None)
    block_size = rules.DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
    rules.validate_block_size(block_size)
    create_sparse(path, size, block_size, uid, stamp, None, overwrite, sync=sync)
    return Created(path, "dynamic", size, block_size, None)


def _create_child(
    path: str,
    parent: str | os.PathLike[str] | None,
    disk_type: str,
    size: int | None,
    block_size: int | None,
    uid: bytes,
    stamp: int,
    overwrite: bool,
    sync: bool,
) -> Created:
    # only a child opens another image: a plain create skips importing the readers
    from vhdtool.format.chain import open_image
    from vhdtool.format.sparse import SparseImage

    if parent is None:
        raise UsageError("a differencing disk needs --parent")
    if disk_type != "differencing":
        raise UsageError(f"--parent makes a differencing disk; it cannot be combined with --type {disk_type}")
    parent = os.fspath(parent)
    if os.path.abspath(parent) == os.path.abspath(path):
        raise UsageError(f"{path}: a disk cannot be its own parent")
    # opening validates the parent's whole chain; no lock: a child may be made over a disk in use
    # (a snapshot layer over a running guest's disk), and opening the child later takes the lock
    with open_image(parent, share=True) as image:
        if size is not None and int(size) != image.size:
            raise UsageError(f"a differencing disk has its parent's size ({image.size}); --size {size} differs")
        meta = image.meta
        geometry = meta.geometry
        if block_size is None:
            block_size = image.block_size if isinstance(image, SparseImage) else rules.DEFAULT_BLOCK_SIZE
        link = ParentLink(
            path=parent,
            unique_id=bytes(meta.footer.unique_id),
            timestamp=rules.to_vhd_timestamp(os.stat(parent).st_mtime),
            geometry=geometry,
            size=image.size,
        )
        child_size = image.size
    rules.validate_block_size(int(block_size))
    create_sparse(path, child_size, int(block_size), uid, stamp, link, overwrite, sync=sync)
    return Created(path, "differencing", child_size, int(block_size), parent)
