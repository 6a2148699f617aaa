"""The undo disk's life: made when a mount starts, committed or discarded when it ends.

An undo disk is a differencing VHD over the image (Virtual PC's "undo disk"): while mounted,
every write lands in it and the image is only read, held by a shared lock so no other writer
can change it underneath. ``umount --commit`` merges the undo disk into the image
(vhdtool.ops.merge, crash-safe in place) and deletes it; ``--discard`` deletes it, leaving the
image byte-identical to before the mount.
"""

from __future__ import annotations

import contextlib
import os

from vhdtool.errors import CorruptImageError, RefusedError, VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.format.image import ImageBase
from vhdtool.format.layout import sync_folder
from vhdtool.format.lock import lock_image
from vhdtool.format.metadata import read_metadata
from vhdtool.format.validate import refuse_corrupt_for_writing
from vhdtool.mount.spec import DIRECT, UNDO, MountSpec
from vhdtool.ops.datapath import ProgressCallback


class Target:
    """The device a mount serves: the undo disk (made here unless one is pending), the image
    itself, or the image read-only under a shared lock (so that no vhdtool writer changes what
    is mounted)."""

    def __init__(self, spec: MountSpec) -> None:
        from vhdtool.format.chain import open_image
        from vhdtool.ops.overlay import create_overlay

        self.spec = spec
        self.made_undo = False
        self._lock_fd: int | None = None
        if spec.mode == UNDO:
            assert spec.undo is not None
            _refuse_corrupt(spec.image)  # an undo disk exists to be committed into the image
            if not os.path.exists(spec.undo):  # one there already holds the file commands' --undo writes
                create_overlay(spec.image, spec.undo)  # refuses a file made in between
                self.made_undo = True
            try:
                self.image: ImageBase = open_image(spec.undo, writable=True)
            except BaseException:
                if self.made_undo:
                    os.unlink(spec.undo)
                raise
        elif spec.mode == DIRECT:
            self.image = open_image(spec.image, writable=True)
        else:
            self.image = open_image(spec.image)
            try:
                self._lock_fd = os.open(spec.image, os.O_RDONLY)
                lock_image(self._lock_fd, spec.image, exclusive=False)
            except BaseException:
                self.close(drop_undo=False)
                raise

    @property
    def device(self) -> BlockDevice:
        return self.image

    def close(self, drop_undo: bool) -> None:
        """Flush and close; ``drop_undo`` deletes an undo disk made by this mount (nothing was
        mounted, so nothing can have been written)."""
        try:
            self.image.close_chain()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if drop_undo and self.made_undo and self.spec.undo:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec.undo)


def committing_path(undo: str) -> str:
    """The mark, beside the undo disk, that a commit into the image has started."""
    return f"{undo}.committing"


def commit_started(undo: str) -> bool:
    """Whether a commit of ``undo`` began and did not finish: the image then holds part of it,
    and only finishing the commit (the undo disk still holds every write) gives a whole filesystem."""
    mark = committing_path(undo)
    if not os.path.exists(mark):
        return False
    if not os.path.exists(undo):  # the commit finished and was killed before removing its mark
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mark)
        return False
    return True


def _refuse_corrupt(image: str) -> None:
    try:
        refuse_corrupt_for_writing(read_metadata(image))
    except CorruptImageError as e:
        raise CorruptImageError(f"{e}; or mount it with --read-only") from None


def commit(undo: str, image: str, progress: ProgressCallback | None = None) -> int:
    """Merge ``undo`` into ``image`` and delete it; the bytes written into the image.

    Before the first write into the image, a mark beside the undo disk records (synced) that the
    commit started, so that an interrupted commit is never discarded as if the image were unchanged.
    """
    if not os.path.exists(undo):
        raise VhdError(f"{undo}: the undo disk is missing; nothing to commit")
    from vhdtool.ops.merge import merge

    mark = committing_path(undo)
    _write_mark(mark, image)
    try:
        written = merge(undo, into=image, delete_child=True, progress=progress).data_bytes
    except RefusedError as e:  # other children of the image in sight: merging would change them
        os.unlink(mark)  # refused before writing anything
        raise RefusedError(f"{e}; the undo disk {undo} is kept and {image} is unchanged") from None
    os.unlink(mark)
    sync_folder(os.path.dirname(os.path.abspath(mark)))
    return written


def _write_mark(mark: str, image: str) -> None:
    try:
        with open(mark, "w") as f:
            f.write(f"{image}\n")
            f.flush()
            os.fsync(f.fileno())
        sync_folder(os.path.dirname(os.path.abspath(mark)))
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(mark)
        raise VhdError(f"{mark}: cannot record that a commit starts: {e.strerror}; nothing committed") from None


def discard(undo: str) -> None:
    if commit_started(undo):
        raise VhdError(f"{undo}: a commit of this undo disk started and did not finish; refusing to discard")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(undo)
