"""`vhdtool info`: what an image is, in qemu-img's key names where they exist."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from vhdtool.errors import LockedError, NotVhdError
from vhdtool.format import rules
from vhdtool.format.chain import open_for_inspection
from vhdtool.format.image import ImageBase
from vhdtool.format.metadata import ImageMetadata
from vhdtool.format.sparse import SparseImage
from vhdtool.format.structs import DISK_TYPE_DIFFERENCING, build_footer
from vhdtool.ops.foreign import explain_not_vhd


def _iso(vhd_timestamp: int) -> str:
    return dt.datetime.fromtimestamp(rules.from_vhd_timestamp(vhd_timestamp), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fourcc(raw: bytes) -> str:
    return raw.decode("latin-1").replace("\0", "\\0")


def _footer_copy_state(meta: ImageMetadata) -> str:
    if not meta.is_sparse:
        return "none (fixed disk)"
    if meta.copy is None:
        return "missing"
    if not meta.copy.checksum_ok:
        return "bad checksum"
    if (
        meta.trailing
        and meta.trailing.checksum_ok
        and build_footer(meta.copy.fields) != build_footer(meta.trailing.fields)
    ):
        return "differs from footer"
    return "ok"


def describe(image: ImageBase) -> dict[str, Any]:
    """One image of a chain as a qemu-img-style document."""
    meta = image.meta
    f = meta.footer
    chs = meta.geometry
    creator = bytes(f.creator_application)
    data: dict[str, Any] = {
        "disk-type": meta.type_name,
        "creator-application": _fourcc(creator),
        "creator-name": rules.CREATOR_NAMES.get(creator, "unknown"),
        "creator-version": f"{f.creator_version >> 16}.{f.creator_version & 0xFFFF}",
        "creator-host-os": _fourcc(bytes(f.creator_host_os)),
        "uuid": str(meta.uuid),
        "timestamp": _iso(int(f.timestamp)),
        "current-size": int(f.current_size),
        "original-size": int(f.original_size),
        "chs": {"cylinders": chs.cylinders, "heads": chs.heads, "sectors-per-track": chs.sectors_per_track},
        "saved-state": bool(f.saved_state),
        "footer-checksum": "ok" if meta.trailing and meta.trailing.checksum_ok else "bad",
        "footer-source": meta.footer_source,
        "footer-copy": _footer_copy_state(meta),
    }
    if chs.size != meta.virtual_size and not chs.is_maximum:  # the maximum means "use the size fields"
        data["chs-size"] = chs.size
        data["qemu-7.2-size"] = rules.qemu72_virtual_size(creator, chs, meta.virtual_size)
    if isinstance(image, SparseImage):
        h = meta.header
        data.update(
            {
                "header-checksum": "ok" if meta.header_checksum_ok else "bad",
                "block-size": image.block_size,
                "max-table-entries": len(image.bat),
                "allocated-blocks": image.allocated_blocks(),
            }
        )
        if meta.disk_type == DISK_TYPE_DIFFERENCING:
            data.update(
                {
                    "parent-uuid": str(meta.parent_uuid),
                    "parent-timestamp": _iso(int(h.parent_timestamp)) if h.parent_timestamp else None,
                    "parent-name": meta.parent_name,
                    "parent-locators": [
                        {"slot": loc.slot, "code": loc.code_name, "path": loc.path} for loc in meta.locators
                    ],
                }
            )
    st = os.stat(image.path)
    doc: dict[str, Any] = {
        "filename": image.path,
        "format": "vpc",
        "virtual-size": image.size,
        "actual-size": st.st_blocks * 512,
        "file-size": st.st_size,
        "dirty-flag": False,
    }
    if isinstance(image, SparseImage):
        doc["cluster-size"] = image.block_size
    parent = image.parent
    if isinstance(parent, ImageBase):
        doc["backing-filename"] = meta.parent_name or parent.path
        doc["full-backing-filename"] = os.path.abspath(parent.path)
        doc["backing-filename-format"] = "vpc"
    elif meta.disk_type == DISK_TYPE_DIFFERENCING:  # the parent is missing: name it as the child does
        doc["backing-filename"] = meta.parent_name or next((loc.path for loc in meta.locators), "")
        doc["backing-filename-format"] = "vpc"
    doc["format-specific"] = {"type": "vpc", "data": data}
    if image.warnings:
        doc["warnings"] = list(image.warnings)
    return doc


def image_info(path: str | os.PathLike[str], chain: bool = False, share: bool = False) -> list[dict[str, Any]]:
    """Describe the image, or with ``chain`` every image from the top down to the base (as far as
    it can be followed: a missing parent or a truncated file is a warning, not an error).

    Takes the shared lock, as ``qemu-img info`` does, unless ``share`` (its ``-U``). An image a
    writer holds (a running guest's disk, a mounted image) is described all the same, without the
    lock and with a warning that its figures may be changing: describing it is what info is asked for."""
    try:
        image = open_for_inspection(path, share=share)
    except NotVhdError as e:
        raise explain_not_vhd(os.fspath(path), e) from None
    except LockedError:
        image = open_for_inspection(path, share=True)
        image.warnings.append(
            f"{os.fspath(path)}: it or a disk of its chain is in use for writing by another process; "
            "read without the lock, so its figures may be changing (-U reads it so without this warning)"
        )
    with image:
        if chain:
            return [describe(i) for i in image.chain()]
        doc = describe(image)
        below = image.all_warnings()[len(image.warnings) :]  # a broken link further down concerns it too
        if below:
            doc["warnings"] = [*doc.get("warnings", []), *below]
        return [doc]
