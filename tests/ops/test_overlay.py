"""One naming scheme for every writable overlay: IMAGE.TAG.vhd, as a table; the overlay a file
command, a mount, a snapshot and a throw-away server make is a differencing child its peer
(vhdiinfo/qemu-img) reads as such."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import need, run
from vhdtool.errors import VhdError
from vhdtool.ops import overlay

G1, G2 = "20261203T102210Z-eb40", "20261203T102215Z-b8e9"


@pytest.mark.parametrize(
    ("image", "tag", "folder", "expected"),
    [
        ("/d/disk.vhd", "undo", None, "/d/disk.vhd.undo.vhd"),
        ("/d/disk.avhd", "undo", None, "/d/disk.avhd.undo.vhd"),
        ("/d/disk.vhd", "undo", "/u", "/u/disk.vhd.undo.vhd"),
        ("/d/disk", G1, None, f"/d/disk.{G1}.vhd"),
    ],
)
def test_overlay_path(image: str, tag: str, folder: str | None, expected: str) -> None:
    assert overlay.overlay_path(image, tag, folder) == expected


def test_undo_path_is_the_undo_overlay() -> None:
    assert overlay.undo_path("/d/disk.vhd") == "/d/disk.vhd.undo.vhd"
    assert overlay.undo_path("disk.vhd") == os.path.join(os.getcwd(), "disk.vhd.undo.vhd")


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ("/d/disk.vhd", f"/d/disk.vhd.{G2}.vhd"),
        (f"/d/disk.vhd.{G1}.vhd", f"/d/disk.vhd.{G2}.vhd"),  # names do not grow over a series
        (f"/d/disk.{G1}.vhd", f"/d/disk.{G2}.vhd"),  # a layer named by an earlier version
        (f"/d/web.vhd.{G1}.qcow2", f"/d/web.vhd.{G2}.vhd"),  # libvirt's overlay of a file disk
        ("/d/disk.vhd.undo.vhd", f"/d/disk.vhd.undo.vhd.{G2}.vhd"),  # only group tags are dropped
    ],
)
def test_snapshot_layer_path(top: str, expected: str) -> None:
    assert overlay.snapshot_layer_path(top, G2) == expected


def test_scratch_paths_and_folders(tmp_path: Path) -> None:
    folder = overlay.make_scratch_folder()
    try:
        assert overlay.is_scratch_folder(folder) and oct(os.stat(folder).st_mode & 0o777) == "0o700"
        assert overlay.scratch_path("/d/disk.vhd", folder) == os.path.join(folder, "disk.vhd.scratch.vhd")
        assert overlay.scratch_path("/d/disk.vhd", folder, "vdb") == os.path.join(folder, "disk.vhd.scratch-vdb.vhd")
    finally:
        overlay.remove_scratch_folder(folder)
    assert not os.path.exists(folder)
    assert overlay.is_scratch_folder("/tmp/vhdtool-run-x1y2")  # an earlier version's, still cleaned
    other = tmp_path / "keep"
    other.mkdir()
    overlay.remove_scratch_folder(str(other))  # any other folder is left alone
    assert other.is_dir()


def test_create_overlay_makes_a_differencing_child_peers_read(tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    vhdtool.create(image, size=8 << 20)
    path = overlay.create_overlay(str(image), overlay.undo_path(str(image)))
    assert path == f"{image}.undo.vhd"
    info = run(need("vhdiinfo"), path).stdout
    assert "Differential" in info and "(8388608 bytes)" in info
    assert "Parent filename\t\t: disk.vhd" in info
    with pytest.raises(VhdError):
        overlay.create_overlay(str(image), path)  # never over an existing file
