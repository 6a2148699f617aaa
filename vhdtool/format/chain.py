"""Opening an image: the right class for its type, and the whole differencing chain below it.

Parents are found through the locators (relative first), verified by UUID, opened read-only
with a shared lock so that nobody writes them while a child depends on them.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid

from vhdtool.errors import CorruptImageError, ParentError, ParentMissingError, UsageError, VhdError
from vhdtool.format import rules
from vhdtool.format.fixed import FixedImage
from vhdtool.format.image import ImageBase
from vhdtool.format.lock import lock_image
from vhdtool.format.metadata import ImageMetadata, read_footers, read_metadata
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING, DISK_TYPE_FIXED

MAX_CHAIN_DEPTH = 256


def _open_fd(path: str, writable: bool) -> int:
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise UsageError(f"{path}: is a directory, not a VHD file")
        return os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as e:
        if e.errno == errno.EROFS and writable:
            raise VhdError(f"{path}: cannot open for writing: read-only file system") from None
        raise VhdError(f"{path}: cannot open: {e.strerror}") from None


def open_image(
    path: str | os.PathLike[str], writable: bool = False, durable: bool = True, share: bool = False
) -> FixedImage | SparseImage:
    """Open a VHD (any type) and resolve its chain. Raises VhdError subclasses on bad input.

    ``durable=False`` skips the fsync that makes each growth of the file crash-safe: for writers
    that fill a new temporary file and rename it into place only once it is complete.
    ``share=True`` (read-only opens only, like qemu's force-share) takes no lock on the chain: for
    a glance at metadata that a writer elsewhere cannot change under it (a new child's parent).
    """
    return _open(os.fspath(path), writable, as_parent=False, seen=(), durable=durable, lock=writable or not share)


def open_for_inspection(path: str | os.PathLike[str], share: bool = False) -> FixedImage | SparseImage:
    """Open read-only to describe an image, not to read its data: a parent that cannot be found,
    and blocks cut off by a truncated file that still holds some whole block, become warnings (as
    qemu-img info and vhdiinfo still show such images); a parent that does not match, or a file
    whose every stored block is cut off, stays an error. The chain stops where it breaks; reads of
    what lies below the break are zeros, so this is not for copying data. ``share`` as for
    ``open_image``."""
    return _open(os.fspath(path), False, as_parent=False, seen=(), inspect=True, lock=not share)


def _open(
    path: str,
    writable: bool,
    as_parent: bool,
    seen: tuple[str, ...],
    durable: bool = True,
    inspect: bool = False,
    lock: bool = True,
) -> FixedImage | SparseImage:
    if len(seen) > MAX_CHAIN_DEPTH:
        raise ParentError(f"{path}: differencing chain deeper than {MAX_CHAIN_DEPTH} images")
    fd = _open_fd(path, writable)
    try:
        meta = read_metadata(path, fd)
        if writable:
            # the checker is loaded by writers only: a reader opens damaged images too
            from vhdtool.format.validate import refuse_corrupt_for_writing

            refuse_corrupt_for_writing(meta)
        if lock:
            lock_image(fd, path, exclusive=writable)
        if meta.disk_type == DISK_TYPE_FIXED:
            return FixedImage(meta, fd, writable)
        parent = None
        if meta.disk_type == DISK_TYPE_DIFFERENCING:
            try:
                parent = _open_parent(meta, (*seen, os.path.realpath(path)), inspect, lock)
            except ParentMissingError as e:  # a disk copied without its parent: still described
                if not inspect:
                    raise
                meta.warnings.append(f"{e}; only this image's own metadata is shown")
            if writable and parent is not None:
                _refuse_broken_link(meta, parent)
        try:
            image = SparseImage(meta, fd, writable, parent, sync_growth=durable, tolerate_cut_blocks=inspect)
            image.owns_parent = parent is not None
            return image
        except BaseException:
            if parent is not None:
                parent.close_chain()
            raise
    except BaseException:
        os.close(fd)
        raise


def _refuse_broken_link(meta: ImageMetadata, parent: ImageBase) -> None:
    from vhdtool.format.validate import CORRUPTION, parent_size_problem  # writers only, as above

    problem = parent_size_problem(meta, parent.meta.virtual_size, parent_modified_since_link(meta, parent.path))
    if problem is not None and problem[0] == CORRUPTION:
        parent.close_chain()
        raise CorruptImageError(f"{problem[1]}; the image opens only read-only (run 'vhdtool check')")


def find_parent(meta: ImageMetadata) -> str:
    """Path of the parent whose UUID matches the child's header, trying every locator."""
    from vhdtool.format.locators import candidate_paths  # as read_metadata: children only

    expected = meta.parent_uuid
    candidates = candidate_paths(meta.path, meta.locators, meta.parent_name)
    mismatched: list[str] = []
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            trailing, copy, _ = read_footers(fd, candidate)
        except VhdError:
            mismatched.append(f"{candidate} is not a VHD")
            continue
        finally:
            os.close(fd)
        found_footer = trailing or copy
        if found_footer is None:
            mismatched.append(f"{candidate} is not a VHD")
            continue
        footer = found_footer.fields
        found = uuid.UUID(bytes=bytes(footer.unique_id))
        if found == expected:
            return candidate
        mismatched.append(f"{candidate} has UUID {found}")
    if mismatched:
        raise ParentError(
            f"{meta.path}: parent UUID mismatch: the child expects parent UUID {expected}, but " + "; ".join(mismatched)
        )
    tried = ", ".join(candidates) or "no locator or parent name"
    raise ParentMissingError(f"{meta.path}: parent disk not found (tried {tried})")


def _open_parent(
    meta: ImageMetadata, seen: tuple[str, ...], inspect: bool, lock: bool = True
) -> FixedImage | SparseImage:
    parent_path = find_parent(meta)
    if os.path.realpath(parent_path) in seen:
        raise ParentError(f"{meta.path}: differencing chain loops back to {parent_path}")
    parent = _open(parent_path, False, as_parent=True, seen=seen, inspect=inspect, lock=lock)
    # a parent smaller than the child is legal (the child grew): SparseImage reads zeros past it
    _check_timestamp(meta, parent)
    return parent


def parent_modified_since_link(meta: ImageMetadata, parent_path: str) -> bool:
    """True when the child's stored parent time stamp says the parent changed after the link.

    The stored value is the parent file's modification time (VirtualBox and vhdtool write it);
    Windows 10 writes 0, which says nothing.
    """
    stored = int(meta.header.parent_timestamp) if meta.header is not None else 0
    return stored != 0 and stored != rules.to_vhd_timestamp(os.stat(parent_path).st_mtime)


def _check_timestamp(meta: ImageMetadata, parent: ImageBase) -> None:
    if parent_modified_since_link(meta, parent.path):
        meta.warnings.append(
            f"{meta.path}: parent {parent.path} was modified after the child was created (parent time stamp differs)"
        )
