"""Opening one image file for an in-place metadata edit: exclusive lock, metadata, editor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from vhdtool.errors import CorruptImageError, VhdError
from vhdtool.format.lock import lock_image
from vhdtool.format.metadata import ImageMetadata, read_metadata
from vhdtool.format.rewrite import MetadataEditor


@contextmanager
def edit_image(path: str, damaged_ok: bool = False) -> Iterator[MetadataEditor]:
    """An editor on ``path`` opened read-write under an exclusive lock (no chain is opened).

    An image with a damaged footer or header is refused unless ``damaged_ok`` (repair).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise VhdError(f"{path}: cannot open for writing: {e.strerror}") from None
    try:
        lock_image(fd, path, exclusive=True)
        meta = read_metadata(path, fd)
        if not damaged_ok:
            refuse_damaged(meta)
        yield MetadataEditor(fd, meta)
    finally:
        os.close(fd)


def refuse_damaged(meta: ImageMetadata) -> None:
    if meta.footer_source != "trailing" or not (meta.trailing and meta.trailing.checksum_ok):
        raise CorruptImageError(f"{meta.path}: the footer is damaged; run 'vhdtool repair' first")
    if not meta.header_checksum_ok:
        raise CorruptImageError(f"{meta.path}: the dynamic header checksum is wrong; run 'vhdtool repair' first")
