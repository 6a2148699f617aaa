"""In-place metadata edits of one image file: exclusive lock, metadata, editor; and keeping the
parent time stamps of its children true afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from vhdtool.errors import VhdError, io_error
from vhdtool.format import rules
from vhdtool.format.lock import lock_image
from vhdtool.format.metadata import read_metadata
from vhdtool.format.rewrite import MetadataEditor
from vhdtool.format.validate import refuse_corrupt_for_writing
from vhdtool.ops.family import children_by_path
from vhdtool.ops.interrupts import deferred_interrupts


@contextmanager
def edit_image(path: str, damaged_ok: bool = False) -> Iterator[MetadataEditor]:
    """An editor on ``path`` opened read-write under an exclusive lock (no chain is opened).

    An image that ``check`` calls corrupt is refused unless ``damaged_ok`` (repair).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise VhdError(f"{path}: cannot open for writing: {e.strerror}") from None
    try:
        lock_image(fd, path, exclusive=True)
        meta = read_metadata(path, fd)
        if not damaged_ok:
            refuse_corrupt_for_writing(meta)
        try:
            yield MetadataEditor(fd, meta)
        except OSError as e:  # a full disk, EIO: the message names the image, as every error does
            raise io_error(path, "write", e) from None
    finally:
        os.close(fd)


def file_stamp(path: str) -> int:
    """The file's modification time as a VHD time stamp (what children record of a parent)."""
    return rules.to_vhd_timestamp(os.stat(path).st_mtime)


def restamp_children(parent: str, folders: list[str], stamp_before: int, seen: set[str] | None = None) -> list[str]:
    """Keep children's parent time stamps true after ``parent``'s file was edited without its
    content changing (a header or footer rewrite).

    The differencing disks in ``folders`` that point at ``parent`` and recorded its old time
    (``stamp_before``) get its new one; their own files change with it, so the same goes on down.
    A child that already recorded another time keeps it: that warning was not ours to clear.
    """
    seen = seen if seen is not None else {os.path.realpath(parent)}
    parent_uuid = read_metadata(parent).uuid
    stamp = file_stamp(parent)
    done: list[str] = []
    for kid in children_by_path(parent, folders):
        if os.path.realpath(kid) in seen:
            continue
        seen.add(os.path.realpath(kid))
        kid_before = file_stamp(kid)
        try:
            with edit_image(kid) as editor:
                header = editor.header
                if editor.meta.parent_uuid != parent_uuid or header is None:
                    continue
                if int(header.parent_timestamp) != stamp_before:
                    continue
                with deferred_interrupts():
                    editor.set_header(parent_timestamp=stamp)
                    editor.sync()
        except VhdError:  # damaged or in use: it keeps its time stamp (and its warning)
            continue
        done.append(kid)
        done += restamp_children(kid, folders, kid_before, seen)
    return done
