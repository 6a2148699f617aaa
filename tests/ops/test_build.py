"""vhdtool build: the images are read back by independent tools after qemu-img converts them to raw."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import VHDTOOL, assert_clean_error, need, run, sha256_of, vhdtool
from tests.ops.buildtree import NON_ASCII, debugfs, extract_partition, first_partition, make_tree, to_raw

MiB = 1 << 20
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("src") / "tree"
    root.mkdir()
    return root, make_tree(root)


def build_raw(folder: Path, src: Path, *options: str) -> tuple[Path, Path]:
    """``vhdtool build`` of ``src`` into folder/out.vhd, which must succeed; the VHD and its raw
    conversion by qemu-img, for the peers to read."""
    out = folder / "out.vhd"
    r = vhdtool("build", out, "--from-dir", src, *options)
    assert r.returncode == 0, r.stderr
    return out, to_raw(out)


def test_ext4_gpt_read_back_by_debugfs(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    src, sums = tree
    out, raw = build_raw(tmp_path, src, "--fs", "ext4", "--table", "gpt", "--label", "root")
    assert "No problems found" in run(need("sgdisk"), "-v", raw).stdout
    off, _ = first_partition(raw)
    spec = f"{raw}?offset={off}"
    assert run(need("e2fsck"), "-fn", spec).returncode == 0
    assert debugfs(spec, "cat /etc/app/app.conf") == "config\n"
    big = subprocess.run([need("debugfs"), "-R", "cat /big.bin", spec], capture_output=True, check=True).stdout
    assert sha256_of(big) == sums["big.bin"]
    assert "Mode:  0640" in debugfs(spec, "stat /etc/app/app.conf")
    tool = debugfs(spec, "stat /bin/tool")
    assert "Mode:  0755" in tool and "User:  1234   Group:  5678" in tool
    link = debugfs(spec, "stat /link")
    assert "Type: symlink" in link and 'Fast link dest: "etc/app/app.conf"' in link
    assert "Links: 2" in debugfs(spec, "stat /hardlink")
    assert "Size: 0" in debugfs(spec, "stat /zero")
    assert "Type: directory" in debugfs(spec, "stat /empty")
    listing = debugfs(spec, "ls -p /deep/a/b/c/d/e/f/g")  # -p prints names unescaped
    assert f"/{NON_ASCII}/" in listing
    assert debugfs(spec, f'cat "/deep/a/b/c/d/e/f/g/{NON_ASCII}"') == "ünïcødé\n"
    # only what the filesystem used is allocated in the VHD
    allocated = int(
        run(need("qemu-img"), "info", "--output=json", out).stdout.split('"actual-size": ')[1].split(",")[0]
    )
    assert allocated < 50 * MiB + 30 * MiB


def test_vfat_mbr_read_back_by_mtools(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    src, sums = tree
    _, raw = build_raw(tmp_path, src, "--fs", "vfat", "--table", "mbr", "--label", "DATA")
    dump = run(need("sfdisk"), "--dump", raw).stdout
    assert "label: dos" in dump and "start=        2048" in dump
    off, _ = first_partition(raw)
    img = f"{raw}@@{off}"
    mtype = subprocess.run(["mtype", "-i", img, "::/etc/app/app.conf"], env=MTOOLS_ENV, capture_output=True)
    assert mtype.stdout == b"config\n"
    big = subprocess.run(["mcopy", "-i", img, "::/big.bin", "-"], env=MTOOLS_ENV, capture_output=True, check=True)
    assert sha256_of(big.stdout) == sums["big.bin"]
    # FAT has no symlinks or hard links: both became copies of their target
    for name in ("link", "hardlink"):
        got = subprocess.run(["mtype", "-i", img, f"::/{name}"], env=MTOOLS_ENV, capture_output=True)
        assert got.stdout == b"config\n"
    deep = subprocess.run(["mdir", "-i", img, "::/deep/a/b/c/d/e/f/g"], env=MTOOLS_ENV, capture_output=True, text=True)
    assert NON_ASCII in deep.stdout
    assert run("fsck.fat", "-n", extract_partition(raw)).returncode == 0


def test_ntfs_read_back_by_ntfs3g_tools(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    src, sums = tree
    _, raw = build_raw(tmp_path, src, "--fs", "ntfs", "--table", "mbr", "--label", "WIN")
    assert "type=7" in run(need("sfdisk"), "--dump", raw).stdout
    part = extract_partition(raw)
    assert run(need("ntfsfix"), "-n", part).returncode == 0
    assert run(need("ntfscat"), part, "/etc/app/app.conf").stdout == "config\n"
    big = subprocess.run([need("ntfscat"), str(part), "/big.bin"], capture_output=True, check=True).stdout
    assert sha256_of(big) == sums["big.bin"]
    assert NON_ASCII in run(need("ntfsls"), "-p", "/deep/a/b/c/d/e/f/g", part).stdout
    assert "zero" in run(need("ntfsls"), part).stdout
    # links, as the ntfs-3g driver itself presents them
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(need("ntfs-3g"), "-o", "ro", part, mnt)
    try:
        assert os.readlink(mnt / "link") == "etc/app/app.conf"
        assert os.stat(mnt / "hardlink").st_nlink == 2
        assert (mnt / "empty").is_dir() and (mnt / "zero").stat().st_size == 0
    finally:
        run("umount", mnt)


def test_reproducible_builds_are_identical(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    src, _ = tree
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    for fs in ("ext4", "vfat"):
        outs = []
        for i in range(2):
            out = tmp_path / f"{fs}{i}.vhd"
            r = subprocess.run(
                [*VHDTOOL, "build", str(out), "--from-dir", str(src), "--fs", fs, "--reproducible"],
                env=env,
                capture_output=True,
                text=True,
            )
            assert r.returncode == 0, r.stderr
            outs.append(out.read_bytes())
            os.utime(src / "etc/app/app.conf")  # a touched atime/mtime in between must not matter
        assert outs[0] == outs[1], fs


def test_owner_reset(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    _, raw = build_raw(tmp_path, tree[0], "--owner", "0:0", "--table", "none")
    assert "User:     0   Group:     0" in debugfs(str(raw), "stat /bin/tool")


def test_bad_input_leaves_no_output(tmp_path: Path, tree: tuple[Path, dict[str, str]]) -> None:
    src, _ = tree
    out = tmp_path / "out.vhd"
    assert_clean_error(vhdtool("build", out, "--from-dir", src, "--size", "20M"))
    assert not out.exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "what?.txt").write_text("x")
    assert_clean_error(vhdtool("build", out, "--from-dir", bad, "--fs", "vfat"))
    assert not out.exists()
    assert_clean_error(vhdtool("build", out, "--from-dir", tmp_path / "missing"))
    out.write_bytes(b"keep")
    assert_clean_error(vhdtool("build", out, "--from-dir", bad))
    assert out.read_bytes() == b"keep"
    assert list(tmp_path.glob(".out.vhd.*")) == []  # no temporary left behind


def test_fat_dangling_symlink_is_skipped_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    os.symlink("missing", src / "dangling")
    out = tmp_path / "out.vhd"
    r = vhdtool("build", out, "--from-dir", src, "--fs", "vfat", "--table", "none")
    assert r.returncode == 0, r.stderr
    assert "dangling symlink skipped" in r.stderr
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(to_raw(out)), "::/"], env=MTOOLS_ENV, capture_output=True, text=True
    ).stdout
    assert "::/a.txt" in listing and "dangling" not in listing
