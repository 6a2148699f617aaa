"""Laying out new, empty images: fixed, dynamic and differencing.

A new file is written beside the target and renamed into place, so a failed create leaves
nothing half-written. Before the rename the file is fsynced, after it the folder, so that a power
cut leaves the old file or the new one; a writer may skip both for a path where there is no old
file (``sync=False``, qemu-img convert's default), never for one it replaces.

Layout of a dynamic disk (as qemu and Virtual PC do it): footer copy at 0, dynamic header at
512, BAT at 1536 (padded to a sector), parent locator data after the BAT, footer at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid as uuid_module
from collections.abc import Iterator
from typing import NamedTuple

from vhdtool.errors import LockedError, UsageError, VhdError
from vhdtool.format import rules
from vhdtool.format.lock import lock_image
from vhdtool.format.sparselayout import BAT_ENTRY_BYTES, BAT_OFFSET, HEADER_OFFSET, table_bytes, table_entries
from vhdtool.format.structs import (
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED,
    EMPTY_LOCATOR_ENTRY,
    FEATURE_RESERVED,
    FOOTER_COOKIE,
    HEADER_COOKIE,
    LOCATOR_SLOTS,
    NO_DATA_OFFSET,
    build_footer,
    build_header,
)
from vhdtool.leftovers import temp_beside


class ParentLink(NamedTuple):
    """What a differencing child records of its parent."""

    path: str
    unique_id: bytes
    timestamp: int
    geometry: rules.Geometry
    size: int


def footer_fields(
    disk_type: int,
    size: int,
    data_offset: int,
    unique_id: bytes,
    timestamp: int,
    geometry: rules.Geometry | None = None,
    creator: rules.Creator = rules.VHDTOOL_CREATOR,
) -> dict:
    geometry = geometry or rules.geometry_for_creator(size, creator)
    return {
        "cookie": FOOTER_COOKIE,
        "features": FEATURE_RESERVED,
        "file_format_version": 0x00010000,
        "data_offset": data_offset,
        "timestamp": timestamp,
        "creator_application": creator.application,
        "creator_version": creator.version,
        "creator_host_os": creator.host_os,
        "original_size": size,
        "current_size": size,
        "cylinders": geometry.cylinders,
        "heads": geometry.heads,
        "sectors_per_track": geometry.sectors_per_track,
        "disk_type": disk_type,
        "checksum": 0,
        "unique_id": unique_id,
        "saved_state": 0,
    }


class SparseImageSpec(NamedTuple):
    """What a new dynamic (no parent) or differencing image is."""

    size: int
    block_size: int
    unique_id: bytes
    timestamp: int
    parent: ParentLink | None = None
    creator: rules.Creator = rules.VHDTOOL_CREATOR


def sparse_image_bytes(path: str, spec: SparseImageSpec) -> tuple[bytes, bytes]:
    """The metadata of an empty dynamic/differencing image: (bytes from offset 0, trailing footer)."""
    parent = spec.parent
    entries = table_entries(spec.size, spec.block_size)
    bat_bytes = table_bytes(entries)
    disk_type = DISK_TYPE_DIFFERENCING if parent else DISK_TYPE_DYNAMIC
    footer = build_footer(
        footer_fields(
            disk_type,
            spec.size,
            HEADER_OFFSET,
            spec.unique_id,
            spec.timestamp,
            parent.geometry if parent else None,
            spec.creator,
        )
    )
    if parent:  # only a child has locators: a plain create does not load their module
        from vhdtool.format.locators import header_parent_name, locator_area

        area, parent_name = locator_area(path, parent.path), header_parent_name(parent.path)
    else:
        area, parent_name = None, bytes(512)
    header = build_header(
        {
            "cookie": HEADER_COOKIE,
            "data_offset": NO_DATA_OFFSET,
            "table_offset": BAT_OFFSET,
            "header_version": 0x00010000,
            "max_table_entries": entries,
            "block_size": spec.block_size,
            "checksum": 0,
            "parent_unique_id": parent.unique_id if parent else bytes(16),
            "parent_timestamp": parent.timestamp if parent else 0,
            "reserved1": 0,
            "parent_unicode_name": parent_name,
            "parent_locators": area.entries(BAT_OFFSET + bat_bytes) if area else [EMPTY_LOCATOR_ENTRY] * LOCATOR_SLOTS,
        }
    )
    bat = b"\xff" * (entries * BAT_ENTRY_BYTES) + bytes(bat_bytes - entries * BAT_ENTRY_BYTES)
    return footer + header + bat + (area.data if area else b""), footer


def _refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{path}: file exists (use --force to overwrite)")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")


def needs_sync(path: str, sync: bool) -> bool:
    """Whether a new file for ``path`` is fsynced before its rename: when asked to, and always when
    it replaces a file (a power cut must leave the old file or the new one, never a torn one)."""
    return sync or os.path.lexists(path)


@contextlib.contextmanager
def new_file_by_name(path: str, overwrite: bool, *, sync: bool) -> Iterator[str]:
    """``write_new_file`` for writers that need a name, not a descriptor (another program): yields
    the temporary path; when the block succeeds the file is fsynced (see ``write_new_file`` for
    ``sync``) and renamed onto ``path``, otherwise removed."""
    _refuse_existing(path, overwrite)
    tmp = temp_beside(path)
    durable = needs_sync(path, sync)
    held = hold_for_replacing(path)
    try:
        yield tmp
        if durable:
            sync_and_rename_into_place(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise VhdError(f"{path}: cannot write {tmp}: {e.strerror}") from None
    finally:
        _unlink_quietly(tmp)
        if held is not None:
            os.close(held)


def write_new_file(path: str, writer: callable, overwrite: bool, *, sync: bool) -> None:
    """Run writer(fd) on a temporary file beside ``path``, fsync, and rename it into place.

    ``sync=False`` leaves out the fsyncs when ``path`` does not exist yet: an interrupted writer
    still leaves no file, but a power cut may leave a new one with data missing. A file that is
    replaced is always fsynced first, so a power cut leaves the old one or the new one."""
    _refuse_existing(path, overwrite)
    tmp = temp_beside(path)
    durable = needs_sync(path, sync)
    held = hold_for_replacing(path)
    try:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise VhdError(f"{path}: cannot create {tmp}: {e.strerror}") from None
        with removed_on_failure(tmp, f"{path}: cannot write {tmp}"):
            try:
                writer(fd)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if durable:
                rename_into_place(tmp, path)
            else:
                os.replace(tmp, path)
    finally:
        if held is not None:
            os.close(held)


def hold_for_replacing(path: str) -> int | None:
    """An fd holding the exclusive lock of the file about to be replaced (None: nothing there),
    so that an image a server, a mount or another command holds open is never replaced under it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable or a dangling link: nobody can hold a lock on it through us
    try:
        lock_image(fd, path, exclusive=True)
    except LockedError:
        os.close(fd)
        raise LockedError(f"{path}: image is in use by another process (locked); not replaced") from None
    return fd


def sync_and_rename_into_place(tmp: str, path: str) -> None:
    """fsync a finished file written by name (another program, a copy), then ``rename_into_place``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    rename_into_place(tmp, path)


def rename_into_place(tmp: str, path: str) -> None:
    """Rename a finished (fsynced) ``tmp`` over ``path`` and fsync the folder: the rename then
    survives a power cut too."""
    os.replace(tmp, path)
    sync_folder(os.path.dirname(os.path.abspath(path)))


def sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename into it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_failure(tmp: str, message: str) -> Iterator[None]:
    """Remove the half-written ``tmp`` when the block fails; an OSError becomes a VhdError that
    starts with ``message``."""
    try:
        yield
    except OSError as e:
        _unlink_quietly(tmp)
        raise VhdError(f"{message}: {e.strerror or e}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def create_fixed(
    path: str, size: int, unique_id: bytes, timestamp: int, overwrite: bool = False, *, sync: bool = False
) -> None:
    footer = build_footer(footer_fields(DISK_TYPE_FIXED, size, NO_DATA_OFFSET, unique_id, timestamp))

    def write(fd: int) -> None:
        os.ftruncate(fd, size)  # sparse: the data area reads as zeros until written
        os.pwrite(fd, footer, size)

    write_new_file(path, write, overwrite, sync=sync)


def create_sparse(
    path: str,
    size: int,
    block_size: int,
    unique_id: bytes,
    timestamp: int,
    parent: ParentLink | None = None,
    overwrite: bool = False,
    *,
    sync: bool = False,
) -> None:
    head, footer = sparse_image_bytes(path, SparseImageSpec(size, block_size, unique_id, timestamp, parent))

    def write(fd: int) -> None:
        os.pwrite(fd, head, 0)
        os.pwrite(fd, footer, len(head))

    write_new_file(path, write, overwrite, sync=sync)


def new_unique_id() -> bytes:
    return uuid_module.uuid4().bytes
