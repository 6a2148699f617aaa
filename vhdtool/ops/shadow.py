"""Changing an image all at once: the changes go into a sparse copy beside it, which replaces it
in one rename.

The file commands write back many pieces of a filesystem (an inode table here, a file's data
there); in place, a kill or power cut between two of them leaves a filesystem that is neither the
old nor the new one. Here the image is copied (only its data runs: holes stay holes; the kernel
copies, reflinking where the filesystem can), the pieces are written into the copy, the copy is
fsynced, renamed over the image and the folder fsynced. Until the rename every reader sees the
old image; after it, the new one. A killed run leaves ``.IMAGE.vhdtool-PID.tmp``, which the next
run for that image removes (``leftovers``). The caller holds the image's exclusive lock
throughout, so nobody changes it between the copy and the rename.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from vhdtool.format.blockdev import file_extents, pwrite_all
from vhdtool.format.layout import removed_on_failure, sync_and_rename_into_place
from vhdtool.leftovers import temp_beside

CHUNK = 8 << 20


@contextlib.contextmanager
def shadow_copy(path: str) -> Iterator[str]:
    """Yield the path of a copy of ``path``; on a clean exit it replaces ``path`` (durably), on
    an exception it is removed and ``path`` is untouched."""
    tmp = temp_beside(path)
    with removed_on_failure(tmp, f"{path}: cannot write its copy {tmp}"):
        _copy_sparse(path, tmp)
        yield tmp
        sync_and_rename_into_place(tmp, path)


def _copy_sparse(src: str, dst: str) -> None:
    sfd = os.open(src, os.O_RDONLY)
    try:
        st = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
        try:
            if os.geteuid() == 0:
                os.fchown(dfd, st.st_uid, st.st_gid)
            os.ftruncate(dfd, st.st_size)
            for run in file_extents(sfd, 0, st.st_size, src):
                if not run.zero:
                    _copy_range(sfd, dfd, run.offset, run.length)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_range(sfd: int, dfd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(sfd, dfd, length - done, offset + done, offset + done)
        except OSError:  # another filesystem, or an old kernel: copy by hand
            n = 0
        if n == 0:
            data = os.pread(sfd, min(CHUNK, length - done), offset + done)
            if not data:
                raise OSError(f"{length - done} bytes short at {offset + done}")
            pwrite_all(dfd, offset + done, data)
            n = len(data)
        done += n
