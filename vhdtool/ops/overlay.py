"""Writable overlays: the differencing child vhdtool puts over an image to take its writes, and
the one scheme that names them.

An overlay of an image ``NAME`` (the image's file name, extension included) is ``NAME.TAG.vhd``;
the tag says why it exists:

- ``undo`` — the undo disk (``vhdtool mount``, the file commands' ``--undo``): beside the image,
  or in the folder a mount is given. Both kinds of command use the same file, so a mount picks
  up what ``cp --undo`` wrote, ``umount --commit`` folds it all into the image, and a file
  command run with ``--undo`` after a mount reads and writes the same pending changes.
- a snapshot group ID (``vhdtool snapshot``): beside the top it covers (same folder, so the
  child's relative parent locator survives moving the folder); the top becomes the
  point-in-time image. A snapshot of such a layer is named after the image under the whole
  series again (``disk.vhd.G1.vhd`` -> ``disk.vhd.G2.vhd``), so names do not grow.
- ``scratch`` — the throw-away layer of ``vhdtool serve --snapshot`` and ``vhdtool run
  --snapshot``: in a private scratch folder removed when the server or guest ends, so the image
  itself never changes. A guest's disks share one folder; each disk's tag carries its id
  (``scratch-vda``) since two disks may have the same file name.

Snapshot layers made before this scheme are named ``STEM.GROUP.vhd`` (``disk.G1.vhd``); the
catalogue keeps their paths, and a later snapshot over one is named by this scheme. Scratch
folders of earlier versions (``vhdtool-run-*``) are still recognised, so that the runner's
clean-up of a killed guest removes them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

UNDO = "undo"
SCRATCH = "scratch"
EXTENSION = ".vhd"

GROUP_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{4}")
"""A snapshot group ID: UTC time and four random hex digits (``vss.layers.new_group_id``)."""

_GROUP_TAIL_RE = re.compile(r"\." + GROUP_RE.pattern + r"(\.[^.]+)?$")

SCRATCH_PREFIX = "vhdtool-scratch-"
_EARLIER_SCRATCH_PREFIXES = ("vhdtool-run-",)


def overlay_path(image: str, tag: str, folder: str | None = None) -> str:
    """``NAME.TAG.vhd`` for the image ``image``: beside it, or in ``folder``."""
    where = os.path.dirname(os.path.abspath(image)) if folder is None else os.path.abspath(folder)
    return os.path.join(where, f"{os.path.basename(image)}.{tag}{EXTENSION}")


def undo_path(image: str, folder: str | None = None) -> str:
    """The undo disk of ``image``: beside it, or in ``folder``."""
    return overlay_path(image, UNDO, folder)


def snapshot_layer_path(top: str, group: str) -> str:
    """The new write layer over ``top`` for snapshot group ``group``, beside ``top``."""
    folder, name = os.path.split(os.path.abspath(top))
    return overlay_path(os.path.join(folder, _GROUP_TAIL_RE.sub("", name)), group)


def scratch_path(image: str, folder: str, slot: str = "") -> str:
    """The throw-away layer of ``image`` in the scratch folder ``folder``; ``slot`` tells apart
    several layers in one folder (a guest's disk id)."""
    return overlay_path(image, f"{SCRATCH}-{slot}" if slot else SCRATCH, folder)


def make_scratch_folder() -> str:
    """A new private scratch folder (mode 0700) under the system's temporary folder."""
    return tempfile.mkdtemp(prefix=SCRATCH_PREFIX)


def is_scratch_folder(path: str) -> bool:
    """Whether ``path`` names a scratch folder (of this version or an earlier one): the check
    that keeps a clean-up from removing any other folder a state file might name."""
    return os.path.basename(os.path.normpath(path)).startswith((SCRATCH_PREFIX, *_EARLIER_SCRATCH_PREFIXES))


def remove_scratch_folder(path: str) -> None:
    if is_scratch_folder(path):
        shutil.rmtree(path, ignore_errors=True)


def create_overlay(image: str, path: str) -> str:
    """Create the differencing child ``path`` of ``image`` (never over an existing file).

    Flushed before it is renamed into place: a guest's or a mount's writes land in it, and a power
    cut must not leave them in a file whose header never reached the disk."""
    from vhdtool.ops.create import create

    create(path, parent=image, sync=True)
    return path
