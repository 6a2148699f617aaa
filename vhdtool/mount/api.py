"""``vhdtool.mount``: mount an image for the length of a ``with`` block.

With the undo disk (the default) the block is a transaction: its changes are committed into the
image when it ends normally and discarded when it raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vhdtool.mount.registry import MountRecord


@contextlib.contextmanager
def mount(
    image: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    partition: int | None = None,
    raw: bool = False,
    driver: str | None = None,
    read_only: bool = False,
    undo: bool = True,
    undo_dir: str | os.PathLike[str] | None = None,
    commit: bool = True,
) -> Iterator[MountRecord]:
    """Mount ``image`` at ``mountpoint`` (an empty folder) inside the block, unmount after it.

    ``raw`` shows ``disk`` and ``p1``..``pN`` files instead of a filesystem; ``partition`` picks
    the partition (default: the first with a filesystem); ``driver`` is ``kernel`` or ``fuse``
    (default: the kernel when root and it knows the filesystem). Writes go to an undo disk
    (committed at a normal exit when ``commit``, else discarded), straight into the image with
    ``undo=False``, or nowhere with ``read_only``. Raises VhdError subclasses.

    Example::

        with vhdtool.mount("disk.vhd", "/mnt/disk"):
            shutil.copy("app.conf", "/mnt/disk/etc/app.conf")
    """
    # imported here: 'import vhdtool' stays quick for everything that never mounts
    from vhdtool.mount import control
    from vhdtool.mount.spec import UNDO, prepare

    spec = prepare(
        os.fspath(image),
        os.fspath(mountpoint),
        raw=raw,
        partition=partition,
        driver=driver,
        read_only=read_only,
        undo=undo,
        undo_dir=None if undo_dir is None else os.fspath(undo_dir),
    )
    record, server = control.spawn(spec)
    completed = False
    try:
        yield record
        completed = True
    finally:
        action = None
        if spec.mode == UNDO:
            action = control.COMMIT if completed and commit else control.DISCARD
        control.unmount(spec.mountpoint, action)
        control.wait_gone(server)
