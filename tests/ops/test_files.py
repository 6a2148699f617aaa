"""ls, cat, cp, rm, mkdir inside images: round trips, fsck after every write, chains, undo, bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, digest, need, run, vhdtool
from tests.ops.buildtree import extract_partition, first_partition, to_raw

MiB = 1 << 20


def fsck_clean(image: Path, fs: str) -> None:
    """The filesystem inside ``image`` passes its own checker (qemu-img reads the image, not vhdtool)."""
    raw = to_raw(image)
    if fs == "ext4":
        off, _ = first_partition(raw)
        r = run(need("e2fsck"), "-fn", f"{raw}?offset={off}", check=False)
    elif fs == "ntfs":
        r = run(need("ntfsfix"), "-n", extract_partition(raw), check=False)
    else:
        r = run(need("fsck.fat"), "-n", extract_partition(raw), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(params=["ext4", "vfat", "ntfs"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (src / "data.bin").write_bytes(os.urandom(3 * MiB))
    out = tmp_path / "disk.vhd"
    r = vhdtool("build", out, "--from-dir", src, "--fs", request.param, "--size", "64M")
    assert r.returncode == 0, r.stderr
    return out, request.param


def names(image: Path, path: str = "/", *extra: str) -> list[str]:
    r = vhdtool("ls", f"{image}:{path}", *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_cp_in_and_out_round_trip(tmp_path: Path, image: tuple[Path, str]) -> None:
    img, fs = image
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(MiB + 123))
    assert vhdtool("cp", payload, f"{img}:/etc/").returncode == 0
    fsck_clean(img, fs)
    assert "payload.bin" in names(img, "/etc")
    cat = subprocess.run([*_cli(), "cat", f"{img}:/etc/payload.bin"], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == payload.read_bytes()
    back = tmp_path / "back.bin"
    assert vhdtool("cp", f"{img}:/etc/payload.bin", back).returncode == 0
    assert digest(back) == digest(payload)
    # a folder tree in and out again
    tree = tmp_path / "tree"
    (tree / "sub/deeper").mkdir(parents=True)
    (tree / "sub/deeper/f.txt").write_text("deep\n")
    (tree / "top.txt").write_text("top\n")
    assert vhdtool("cp", tree, f"{img}:/").returncode == 0
    fsck_clean(img, fs)
    out = tmp_path / "out"
    assert vhdtool("cp", f"{img}:/tree", out).returncode == 0
    assert (out / "sub/deeper/f.txt").read_text() == "deep\n" and (out / "top.txt").read_text() == "top\n"


def test_rm_then_ls_and_mkdir(image: tuple[Path, str]) -> None:
    img, fs = image
    assert vhdtool("rm", f"{img}:/data.bin").returncode == 0
    fsck_clean(img, fs)
    assert "data.bin" not in names(img)
    assert vhdtool("mkdir", "-p", f"{img}:/a/b/c").returncode == 0
    fsck_clean(img, fs)
    assert names(img, "/a/b") == ["c/"]
    assert_clean_error(vhdtool("rm", f"{img}:/a"))  # a folder needs -r
    assert vhdtool("rm", "-r", f"{img}:/a").returncode == 0
    assert vhdtool("rm", "-r", f"{img}:/etc").returncode == 0
    fsck_clean(img, fs)
    assert "a/" not in names(img) and "etc/" not in names(img)


def test_bad_paths_leave_the_image_untouched(tmp_path: Path, image: tuple[Path, str]) -> None:
    img, _ = image
    before = digest(img)
    local = tmp_path / "f.txt"
    local.write_text("x")
    for args in (
        ("cat", f"{img}:/no/such/file"),
        ("cat", f"{img}:/etc"),  # a folder
        ("ls", f"{img}:/missing"),
        ("cp", local, f"{img}:/etc/hosts/inside"),  # a file where a folder is expected
        ("cp", local, f"{img}:/missing/dir/f.txt"),
        ("rm", f"{img}:/missing"),
        ("mkdir", f"{img}:/etc"),  # exists
        ("cp", f"{img}:/missing", tmp_path / "out"),
        ("cp", tmp_path / "nothing", f"{img}:/"),
    ):
        assert_clean_error(vhdtool(*args))
    assert digest(img) == before
    too_big = tmp_path / "too_big.bin"
    too_big.write_bytes(os.urandom(70 * MiB))
    r = vhdtool("cp", too_big, f"{img}:/")
    assert_clean_error(r)
    assert "not enough free space" in r.stderr
    assert digest(img) == before
    not_an_image = tmp_path / "plain.vhd"
    not_an_image.write_bytes(bytes(MiB))
    assert_clean_error(vhdtool("ls", not_an_image))


def test_writes_land_in_the_child_of_a_chain(tmp_path: Path, image: tuple[Path, str]) -> None:
    img, _ = image
    child = tmp_path / "child.vhd"
    assert vhdtool("create", child, "--parent", img).returncode == 0
    before = digest(img)
    local = tmp_path / "new.txt"
    local.write_text("new\n")
    assert vhdtool("cp", local, f"{child}:/new.txt").returncode == 0
    assert digest(img) == before
    assert "new.txt" in names(child) and "new.txt" not in names(img)


def test_undo_disk_takes_the_writes(tmp_path: Path, image: tuple[Path, str]) -> None:
    img, _ = image
    before = digest(img)
    assert vhdtool("mkdir", "--undo", f"{img}:/undone").returncode == 0
    undo = Path(f"{img}.undo.vhd")
    assert undo.exists() and digest(img) == before
    assert "undone/" in names(img, "/", "--undo") and "undone/" not in names(img)
    # a failed write with --undo leaves no new undo disk behind
    undo.unlink()
    assert_clean_error(vhdtool("rm", "--undo", f"{img}:/missing"))
    assert not undo.exists()


def _cli() -> list[str]:
    from tests.helpers import VHDTOOL

    return VHDTOOL
