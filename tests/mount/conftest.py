"""Fixtures for the mount tests: an isolated mount registry, a mountpoint that is always left
clean, and images whose filesystems were made with mkfs through ``vhdtool mount --raw``.

Everything mounts for real (root, /dev/fuse); the filesystems are read back by their own tools
(debugfs, mtools, ntfs-3g's ntfsls/ntfscat) on a raw copy made by qemu-img, never by vhdtool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import need, run, vhdtool
from vhdtool.mount import registry, system

MiB = 1 << 20


def ok(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run a vhdtool command that must succeed without a traceback."""
    done = vhdtool(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own mount registry (the CLI subprocesses inherit the variable)."""
    folder = tmp_path / "run"
    monkeypatch.setenv("VHDTOOL_RUNTIME_DIR", str(folder))
    return folder


@pytest.fixture
def mnt(tmp_path: Path, runtime_dir: Path) -> Iterator[Path]:
    """An empty mountpoint; whatever a test leaves mounted there is taken down afterwards."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    record = registry.load(str(path))
    if record is not None:
        vhdtool("umount", "--discard" if record.mode == "undo" else "--commit", path)
    for where in (path, Path(registry.private_dir(str(path)))):
        while system.mounted_at(str(where)) is not None:
            system.unmount(str(where), lazy=True)
    assert registry.records() == [], "a test left a vhdtool mount behind"


def make_fs(image: Path, mnt: Path, fs: str, target: str = "disk") -> None:
    """mkfs ``fs`` (ext4, fat32, fat16, ntfs) on the raw-view file ``target`` of ``image``."""
    ok("mount", "--raw", "--no-undo", image, mnt)
    try:
        file = mnt / target
        if fs == "ext4":
            run(need("mkfs.ext4"), "-q", "-F", file)
        elif fs in ("fat32", "fat16"):
            run(need("mkfs.vfat"), "-F", fs[3:], file)
        elif fs == "ntfs":
            run(need("mkfs.ntfs"), "-F", "-f", "-q", file)
        else:
            raise AssertionError(fs)
    finally:
        ok("umount", mnt)


@pytest.fixture(scope="session")
def fs_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One freshly made image per filesystem (copy before changing it)."""
    folder = tmp_path_factory.mktemp("fs-images")
    made: dict[str, Path] = {}
    with _session_registry(folder / "run"):
        for fs, size in (("ext4", "64M"), ("fat32", "64M"), ("ntfs", "64M"), ("fat16", "32M")):
            image = folder / f"{fs}.vhd"
            ok("create", "--size", size, image)
            (folder / f"mnt-{fs}").mkdir()
            make_fs(image, folder / f"mnt-{fs}", fs)
            made[fs] = image
    yield made


@contextlib.contextmanager
def _session_registry(folder: Path) -> Iterator[None]:
    old = os.environ.get("VHDTOOL_RUNTIME_DIR")
    os.environ["VHDTOOL_RUNTIME_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            del os.environ["VHDTOOL_RUNTIME_DIR"]
        else:
            os.environ["VHDTOOL_RUNTIME_DIR"] = old


@pytest.fixture
def image_of(fs_images: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """``image_of('ext4')``: a private copy of the session's ext4 image."""

    def copy(fs: str) -> Path:
        target = tmp_path / f"{fs}.vhd"
        shutil.copyfile(fs_images[fs], target)
        return target

    return copy
