"""What happens to a snapshot after it was taken: list the groups on record, fold a snapshot's
layer back into its point-in-time image (merge), or drop that layer (discard).

Both act on images no guest is using: the active layer is opened for writing first, and the lock
that a running guest's disk server holds on it refuses that with a one-line error.

- merge: the writes made since the snapshot (the new layer) are committed into the point-in-time
  image, and the layer is deleted. The disk is one layer again, at its original path, with its
  current content; the point in time is gone (Hyper-V's "delete checkpoint", libvirt's
  blockcommit).
- discard: the new layer is deleted. The disk returns to the point in time; the writes since are
  lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vhdtool.errors import UsageError, VhdError
from vhdtool.vss import catalogue


@dataclass(frozen=True, slots=True)
class Done:
    snapshot: str
    active: str
    action: str


def _check_unused(active: str) -> None:
    """Refuse when a guest still writes to ``active`` or a later snapshot was layered on it."""
    from vhdtool.format.chain import open_image

    with open_image(active, writable=True):  # the lock of a running disk server refuses this
        pass
    children = _children(active)
    if children:
        raise UsageError(f"{active}: a later snapshot layer sits on it ({children[0]}); merge or discard that first")


def _children(image: str) -> list[str]:
    """Images in the same folder whose parent is ``image`` (the snapshot layers made over it)."""
    from vhdtool.format.chain import find_parent
    from vhdtool.format.metadata import read_metadata
    from vhdtool.format.structs import DISK_TYPE_DIFFERENCING

    folder = os.path.dirname(os.path.abspath(image))
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".vhd") or not os.path.isfile(path) or os.path.samefile(path, image):
            continue
        try:
            meta = read_metadata(path)  # no lock: a child a running guest writes counts too
            if meta.disk_type == DISK_TYPE_DIFFERENCING and os.path.samefile(find_parent(meta), image):
                found.append(path)
        except (VhdError, OSError):
            continue
    return found


def merge_layer(snapshot: str, active: str) -> Done:
    """Commit ``active`` into its parent ``snapshot`` and delete it."""
    _check_unused(active)
    try:
        from vhdtool.ops.merge import merge
    except ImportError:
        raise VhdError("merging needs vhdtool.ops.merge (the image operations), which this install lacks") from None
    merge(active, into=snapshot, delete_child=True)
    return Done(snapshot, active, "merged")


def discard_layer(snapshot: str, active: str) -> Done:
    """Delete ``active``: the disk reads as ``snapshot`` again."""
    if os.path.exists(active):
        _check_unused(active)
        os.unlink(active)
    return Done(snapshot, active, "discarded")


def apply(snapshot: str, action: str, where: str | None = None) -> list[Done]:
    """Merge or discard every layer of a group (a group ID) or one disk's (an image path)."""
    record, pairs = catalogue.find(snapshot, where)
    fn = merge_layer if action == "merge" else discard_layer
    done = [fn(snap, active) for snap, active in pairs]
    left = [
        (g, d)
        for g in record.report.guests
        for d in g.disks
        if not any(os.path.realpath(d.active) == os.path.realpath(x.active) for x in done)
    ]
    if left:
        for g in record.report.guests:
            g.disks = [d for d in g.disks if any(d is x for _, x in left)]
        catalogue.save(record.report, record.state, where)
    else:
        catalogue.remove(record.report.group, where)
    return done
