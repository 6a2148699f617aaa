"""What a mount will do, decided and checked before anything is changed.

``prepare`` turns the user's request into a ``MountSpec``: it opens the image read-only, finds
the partition and its filesystem, picks the driver and the undo disk's path, and checks the
mountpoint and FUSE. Every refusal (not an empty folder, no such partition, unknown filesystem,
no FUSE, an undo disk already pending) is a one-line error raised here, before a server starts
or a file is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vhdtool.disk.partitions import read_table, select
from vhdtool.errors import UsageError
from vhdtool.mount import drivers, fusebind, registry
from vhdtool.mount.rawtree import DISK
from vhdtool.ops.overlay import undo_path

UNDO = "undo"
DIRECT = "direct"
READ_ONLY = "read-only"


@dataclass(frozen=True, slots=True)
class MountSpec:
    """A checked mount request; plain values only (it travels to the server as JSON)."""

    image: str
    mountpoint: str
    mode: str
    """``undo``, ``direct`` (--no-undo) or ``read-only``."""
    undo: str | None
    raw: bool
    partition: int | None = None
    source: str | None = None
    """The raw-view file holding the filesystem: ``p<N>``, or ``disk`` without a partition table."""
    fs: str | None = None
    """Detected filesystem variant (ext4, fat32, ntfs, ...)."""
    route_kind: str | None = None
    fstype: str | None = None
    program: str | None = None

    @property
    def read_only(self) -> bool:
        return self.mode == READ_ONLY

    @property
    def route(self) -> drivers.Route:
        assert self.route_kind is not None and self.fstype is not None
        return drivers.Route(self.route_kind, self.fstype, self.program)


def prepare(
    image: str,
    mountpoint: str,
    *,
    raw: bool = False,
    partition: int | None = None,
    driver: str | None = None,
    read_only: bool = False,
    undo: bool = True,
    undo_dir: str | None = None,
) -> MountSpec:
    """Check a mount request and resolve everything the server needs."""
    from vhdtool.format.chain import open_image

    if raw and (partition is not None or driver is not None):
        raise UsageError("--raw shows the whole disk and every partition; --partition and --driver do not apply")
    if read_only and (undo_dir is not None or not undo):
        raise UsageError("--read-only writes nothing: --no-undo and --undo-dir do not apply")
    image, mountpoint = os.path.abspath(image), os.path.abspath(mountpoint)
    _check_mountpoint(mountpoint)
    fusebind.check()
    mode = READ_ONLY if read_only else UNDO if undo else DIRECT
    undo_file = undo_path(image, undo_dir) if mode == UNDO else None
    if undo_dir is not None and not os.path.isdir(undo_dir):
        raise UsageError(f"{undo_dir}: no such folder (--undo-dir)")
    with open_image(image) as dev:  # validates the image and its chain (a shared lock, for this moment)
        if not raw:
            table = read_table(dev)
            part, fs = select(dev, table, partition)
            route = drivers.choose(fs, driver, read_only)
    owner = (registry.find_by_undo(undo_file) if undo_file else None) or registry.find_pending_over(image)
    if owner is not None and mode != READ_ONLY:
        raise UsageError(
            f"{owner.undo}: undo disk of the mount at {owner.mountpoint} is pending; end it with "
            f"'vhdtool umount --commit|--discard {owner.mountpoint}'"
        )
    if undo_file is not None and os.path.exists(undo_file):
        _check_undo_disk(undo_file, image)  # the file commands' --undo left it: this mount goes on with it
    beside = undo_path(image)
    if undo_file is not None and undo_file != beside and os.path.exists(beside):
        # a second undo disk over the image: committing either would change the other's parent
        raise UsageError(
            f"{beside}: the file commands' --undo changes wait there; mount without --undo-dir to "
            "carry on with them (its umount commits or discards them)"
        )
    if raw:
        return MountSpec(image, mountpoint, mode, undo_file, raw=True)
    return MountSpec(
        image,
        mountpoint,
        mode,
        undo_file,
        raw=False,
        partition=part.number,
        source=DISK if table.scheme == "none" else f"p{part.number}",
        fs=fs.variant,
        route_kind=route.kind,
        fstype=route.fstype,
        program=route.program,
    )


def _check_mountpoint(mountpoint: str) -> None:
    if registry.load(mountpoint) is not None:
        raise UsageError(
            f"{mountpoint}: vhdtool has a mount there already (see 'vhdtool mount --list'; 'vhdtool umount' ends it)"
        )
    if not os.path.isdir(mountpoint):
        raise UsageError(f"{mountpoint}: not a folder (the mountpoint must be an empty folder)")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint}: something is mounted there already")
    try:
        if os.listdir(mountpoint):
            raise UsageError(f"{mountpoint}: not empty (the mountpoint must be an empty folder)")
    except PermissionError:
        raise UsageError(f"{mountpoint}: cannot read the folder (permission denied)") from None


def _check_undo_disk(undo_file: str, image: str) -> None:
    """An undo disk already there must be a child of ``image`` (its writes are carried on)."""
    from vhdtool.format.chain import open_image

    with open_image(undo_file) as dev:
        if dev.parent is None or os.path.realpath(dev.parent.path) != os.path.realpath(image):
            raise UsageError(f"{undo_file}: in the way, and not a differencing child of {image}; move or delete it")
