"""`vhdtool build`: a folder into a partitioned VHD with a filesystem, without root or FUSE.

The filesystem's own tool (mke2fs -d, mkfs.fat + mtools, ...) builds the filesystem in a sparse
temporary file the size of the partition; vhdtool's own code writes the partition table. A
``Composite`` device places table and partition on the virtual disk, and only its allocated
extents are written into the VHD. The VHD is written beside OUT and renamed into place, so a
failed build leaves no OUT (and an existing OUT untouched).

``--reproducible``: every identifier (VHD unique id, GPT disk and partition GUIDs, MBR signature,
filesystem UUID) is derived from SOURCE_DATE_EPOCH and a digest of the folder listing; every
timestamp is the epoch (file modification times are clamped to it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vhdtool.disk.detect import detect
from vhdtool.disk.fs import driver_for
from vhdtool.disk.fs.base import MakeOptions, Volume
from vhdtool.disk.fs.tree import Tree, scan
from vhdtool.disk.gpt import GPT_OVERHEAD_SECTORS
from vhdtool.disk.partitions import SCHEMES, table_writes
from vhdtool.disk.table import GPT_LINUX_FS, GPT_MS_BASIC_DATA, Partition
from vhdtool.disk.view import BytesDevice, Composite
from vhdtool.errors import UsageError
from vhdtool.format import rules
from vhdtool.format.blockdev import RawFile
from vhdtool.format.layout import hold_for_replacing, rename_into_place
from vhdtool.leftovers import sweep_beside, tag
from vhdtool.ops.convert import convert
from vhdtool.ops.datapath import ProgressCallback
from vhdtool.ops.growth import allocated_bytes, watched

MiB = 1 << 20
ALIGN = MiB
"""Partitions start and end on 1 MiB boundaries, as sfdisk and Windows align them."""
FILESYSTEMS = ("ext4", "ext3", "ext2", "vfat", "ntfs")
_NAMESPACE = uuid.UUID("6f1d2a0c-5b7e-4c43-9a57-0f3c1c9e8b21")


@dataclass(frozen=True, slots=True)
class Built:
    path: str
    size: int
    """Virtual disk size."""
    filesystem: str
    table: str
    partition_start: int
    partition_size: int
    fs_uuid: str
    files: int
    data_bytes: int
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def source_date_epoch(tree: Tree) -> int:
    """SOURCE_DATE_EPOCH if set, else the newest modification time in the folder (deterministic too)."""
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is not None:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={text!r} is not a whole number of seconds") from None
    return max([int(st.st_mtime) for _, st in tree.entries] + [int(tree.root.stat().st_mtime)])


def _tree_digest(tree: Tree, epoch: int, fs: str, table: str) -> bytes:
    """What makes two builds the same build: names, types, sizes, modes and clamped times."""
    h = hashlib.sha256(f"{epoch}\0{fs}\0{table}".encode())
    for rel, st in tree.entries:
        h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{st.st_size}\0{min(int(st.st_mtime), epoch)}\n".encode())
    return h.digest()


class _Ids:
    """Identifiers for a build: random, or derived from a seed for reproducible builds."""

    def __init__(self, seed: bytes | None) -> None:
        self.seed = seed

    def uuid(self, role: str) -> uuid.UUID:
        return uuid.uuid4() if self.seed is None else uuid.uuid5(_NAMESPACE, self.seed.hex() + role)


def _layout(scheme: str, disk_size: int | None, fs_size: int | None) -> tuple[int, int, int]:
    """(disk size, partition start, partition size): from the disk size, or around an fs size."""
    start = 0 if scheme == "none" else ALIGN
    tail = ALIGN if scheme == "gpt" else 0  # room for the backup GPT, kept aligned
    if disk_size is None:
        assert fs_size is not None
        return start + fs_size + tail, start, fs_size
    if disk_size % rules.SECTOR:
        raise UsageError(f"--size {disk_size} is not a multiple of 512 bytes")
    usable_end = disk_size - (GPT_OVERHEAD_SECTORS * rules.SECTOR if scheme == "gpt" else 0)
    size = (usable_end - start) // ALIGN * ALIGN if scheme != "none" else disk_size
    if size < MiB:
        raise UsageError(f"--size {disk_size} leaves no room for a filesystem")
    return disk_size, start, size


def _partition_type(scheme: str, fs: str, variant: str) -> str:
    if scheme == "gpt":
        return GPT_LINUX_FS if fs.startswith("ext") else GPT_MS_BASIC_DATA
    if fs.startswith("ext"):
        return "0x83"
    if fs == "ntfs":
        return "0x07"
    return {"fat12": "0x01", "fat16": "0x0e"}.get(variant, "0x0c")


def build(
    out: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    fs: str = "ext4",
    table: str = "gpt",
    size: int | None = None,
    label: str | None = None,
    fs_uuid: str | None = None,
    disk_type: str = "dynamic",
    owner: tuple[int, int] | None = None,
    reproducible: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Built:
    """Build the VHD ``out`` from the folder ``source``; ``size`` None sizes it to the content.

    ``progress(done, total)`` counts two equal halves: the files the filesystem tool has written
    (seen as the partition file's allocated bytes), then the copy into the VHD."""
    out, src = os.fspath(out), Path(source)
    if fs not in FILESYSTEMS:
        raise UsageError(f"unknown filesystem {fs!r} (choose {', '.join(FILESYSTEMS)})")
    if table not in SCHEMES:
        raise UsageError(f"unknown partition table {table!r} (choose {', '.join(SCHEMES)})")
    if disk_type not in ("dynamic", "fixed"):
        raise UsageError(f"unknown VHD type {disk_type!r} (choose dynamic or fixed)")
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder")
    if os.path.isdir(out):
        raise UsageError(f"{out}: is a directory")
    if os.path.exists(out) and not overwrite:
        raise UsageError(f"{out}: exists (use --force to replace it)")
    driver = driver_for(fs)
    tree = scan(src)
    epoch = source_date_epoch(tree) if reproducible else None
    ids = _Ids(_tree_digest(tree, epoch, fs, table) if epoch is not None else None)
    disk_size, start, fs_size = _layout(table, size, driver.estimate_size(tree) if size is None else None)
    needed = tree.blocks_4k * 4096
    if needed > fs_size:
        raise UsageError(f"{src} holds {needed} bytes of files, more than the {fs_size}-byte filesystem of --size")
    rules.validate_virtual_size(disk_size, disk_type)

    held = hold_for_replacing(out)  # never replace an image something holds open
    try:
        sweep_beside(out)
        work = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.{tag()}.", dir=os.path.dirname(os.path.abspath(out))))
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    try:
        part_path = work / "partition.raw"
        with open(part_path, "wb") as f:
            f.truncate(fs_size)
        opts = MakeOptions(
            label=label,
            uuid=fs_uuid or _fs_id(fs, ids),
            owner=owner,
            epoch=epoch,
            hidden_sectors=start // rules.SECTOR,
            fs_variant=fs if fs.startswith("ext") else None,
        )
        first_half = None if progress is None else (lambda done: progress(done, 2 * max(needed, 1)))
        with watched(lambda: allocated_bytes(part_path), needed, first_half):
            warnings = driver.make(Volume(str(part_path), fs_size), src, tree, opts)
        with RawFile(part_path) as part_dev:
            made = detect(part_dev)
            assert made is not None, "the filesystem tool left no filesystem"
            partition = Partition(
                1,
                start,
                fs_size,
                _partition_type(table, fs, made.variant),
                name=(label or "")[:36] if table == "gpt" else "",
                uuid=str(ids.uuid("partition")) if table == "gpt" else None,
            )
            disk_id = str(ids.uuid("disk")) if table == "gpt" else ids.uuid("disk").hex[:8]
            pieces_ = [
                (off, BytesDevice(data, "<partition table>"))
                for off, data in table_writes(table, disk_size, [partition] if table != "none" else [], disk_id)
            ]
            disk = Composite(disk_size, [*pieces_, (start, part_dev)], name=str(src))
            tmp_out = str(work / "out.vhd")
            written = convert(
                disk,
                tmp_out,
                output_format="vhd",
                disk_type=disk_type,
                unique_id=ids.uuid("vhd").bytes,
                timestamp=epoch,
                progress=None if progress is None else _second_half(needed, progress),
            ).data_bytes
        rename_into_place(tmp_out, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if held is not None:
            os.close(held)
    return Built(
        path=out,
        size=disk_size,
        filesystem=f"{made.type} ({made.variant})" if made.type == "vfat" else made.type,
        table=table,
        partition_start=start,
        partition_size=fs_size,
        fs_uuid=made.uuid,
        files=tree.files,
        data_bytes=written,
        warnings=warnings,
    )


def _second_half(needed: int, progress: ProgressCallback) -> ProgressCallback:
    """The copy into the VHD as the second half of the build's progress."""
    half = max(needed, 1)

    def report(done: int, total: int) -> None:
        progress(half + (half * done // total if total else half), 2 * half)

    return report


def _fs_id(fs: str, ids: _Ids) -> str | None:
    """A derived filesystem id for reproducible builds (None: the tool picks a random one)."""
    if ids.seed is None:
        return None
    u = ids.uuid("filesystem")
    if fs == "vfat":
        return u.hex[:8].upper()
    if fs == "ntfs":
        return u.hex[:16].upper()
    return str(u)


