"""One undo disk per image: the file commands' --undo and the mount write the same IMAGE.undo.vhd."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from tests.helpers import assert_clean_error, digest, vhdtool
from tests.mount import peers
from tests.mount.conftest import ok
from vhdtool.mount import registry


def test_a_mount_carries_on_the_file_commands_undo_disk_and_commit_folds_in_both(
    image_of, mnt: Path, tmp_path: Path
) -> None:
    image = image_of("ext4")
    before = digest(image)
    note = tmp_path / "note.txt"
    note.write_text("from cp --undo\n")
    ok("cp", "--undo", note, f"{image}:/note.txt")
    undo = Path(f"{image}.undo.vhd")
    assert undo.exists() and digest(image) == before

    ok("mount", image, mnt)
    assert (mnt / "note.txt").read_text() == "from cp --undo\n"  # the mount sees the pending write
    (mnt / "mounted.txt").write_text("from the mount\n")
    ok("umount", "--commit", mnt)

    assert not undo.exists()
    raw = peers.to_raw(image, tmp_path / "image.raw")
    assert peers.cat("ext4", raw, "/note.txt") == b"from cp --undo\n"
    assert peers.cat("ext4", raw, "/mounted.txt") == b"from the mount\n"
    assert peers.fsck_clean("ext4", raw)[0]


def test_discard_after_a_mount_drops_the_file_commands_writes_too(image_of, mnt: Path, tmp_path: Path) -> None:
    image = image_of("ext4")
    before = digest(image)
    note = tmp_path / "note.txt"
    note.write_text("pending\n")
    ok("cp", "--undo", note, f"{image}:/note.txt")
    ok("mount", image, mnt)
    ok("umount", "--discard", mnt)
    assert digest(image) == before and not Path(f"{image}.undo.vhd").exists()


def test_a_pending_mount_whose_undo_disk_has_another_name_keeps_it(image_of, mnt: Path, tmp_path: Path) -> None:
    """A mount started by an earlier vhdtool named its undo disk otherwise: it is still the one
    umount commits, and no second undo disk is made over the image while it is pending."""
    image = image_of("ext4")
    ok("mount", image, mnt)
    (mnt / "kept.txt").write_text("kept\n")
    record = registry.load(str(mnt))
    assert record is not None and record.undo is not None
    older = f"{image}.earlier-name.vhd"
    os.rename(record.undo, older)  # the server writes through its open file
    registry.save(replace(record, undo=older))

    other = tmp_path / "other"
    other.mkdir()
    refused = vhdtool("mount", image, other)
    assert_clean_error(refused, 64)
    assert f"undo disk of the mount at {mnt} is pending" in refused.stderr
    assert not Path(f"{image}.undo.vhd").exists()

    ok("umount", "--commit", mnt)
    assert not Path(older).exists()
    raw = peers.to_raw(image, tmp_path / "image.raw")
    assert peers.cat("ext4", raw, "/kept.txt") == b"kept\n"


def test_an_unrelated_file_in_the_undo_disks_place_is_refused(image_of, mnt: Path) -> None:
    image = image_of("ext4")
    ok("create", "--size", "8M", f"{image}.undo.vhd")
    before = digest(image)
    refused = vhdtool("mount", image, mnt)
    assert_clean_error(refused, 64)
    assert "not a differencing child" in refused.stderr
    assert digest(image) == before and registry.records() == []


def test_a_mount_elsewhere_is_refused_while_the_file_commands_undo_disk_waits(
    image_of, mnt: Path, tmp_path: Path
) -> None:
    """Two undo disks over one image: committing either would change the other's parent."""
    image = image_of("ext4")
    note = tmp_path / "note.txt"
    note.write_text("pending\n")
    ok("cp", "--undo", note, f"{image}:/note.txt")
    undo = Path(f"{image}.undo.vhd")
    before = digest(image), digest(undo)
    folder = tmp_path / "undo"
    folder.mkdir()
    refused = vhdtool("mount", "--undo-dir", folder, image, mnt)
    assert_clean_error(refused, 64)
    assert "mount without --undo-dir" in refused.stderr
    assert list(folder.iterdir()) == [] and (digest(image), digest(undo)) == before
    ok("mount", image, mnt)  # the undo disk beside it is carried on
    assert (mnt / "note.txt").read_text() == "pending\n"
    ok("umount", "--discard", mnt)


def test_a_file_commands_undo_is_refused_while_a_mount_elsewhere_waits(
    image_of, mnt: Path, tmp_path: Path
) -> None:
    """The other way round: the mount's undo disk lies elsewhere; cp/rm/mkdir --undo would make a
    second one over the same image."""
    image = image_of("ext4")
    folder = tmp_path / "undo"
    folder.mkdir()
    ok("mount", "--undo-dir", folder, image, mnt)
    try:
        (mnt / "mounted.txt").write_text("from the mount\n")
        note = tmp_path / "note.txt"
        note.write_text("from cp --undo\n")
        before = digest(image)
        for command in (["cp", "--undo", note, f"{image}:/note.txt"], ["mkdir", "--undo", f"{image}:/d"]):
            refused = vhdtool(*command)
            assert_clean_error(refused, 1)
            assert "umount it first" in refused.stderr and str(mnt) in refused.stderr
        assert not Path(f"{image}.undo.vhd").exists() and digest(image) == before
    finally:
        ok("umount", "--discard", mnt)
