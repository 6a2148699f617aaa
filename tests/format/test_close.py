"""close() releases what an image owns: its file and lock, and the parents it opened itself."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import set_bat
from vhdtool.disk.view import PartitionView
from vhdtool.errors import CorruptImageError, LockedError
from vhdtool.format.chain import open_image
from vhdtool.format.layers import open_over
from vhdtool.format.rules import MiB


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "base.vhd", tmp_path / "mid.vhd", tmp_path / "top.vhd"]
    vhdtool.create(paths[0], size=8 * MiB)
    vhdtool.create(paths[1], parent=paths[0])
    vhdtool.create(paths[2], parent=paths[1])
    return paths


def test_close_of_a_chain_releases_every_file_and_lock(chain: list[Path]) -> None:
    before = _open_fds()
    top = open_image(chain[2], writable=True)
    top.pwrite(0, b"x" * 4096)
    top.flush()
    with pytest.raises(LockedError):  # the parents are held (shared) while the chain is open
        open_image(chain[0], writable=True)
    top.close()
    assert _open_fds() == before
    for path in chain:  # no lock left behind: each one opens for writing again
        open_image(path, writable=True).close()
    top.close()  # a second close is harmless


def test_a_layer_opened_over_a_held_device_leaves_it_open(chain: list[Path]) -> None:
    mid = open_image(chain[1])
    try:
        top = open_over(chain[2], mid, uuid.UUID(bytes=bytes(mid.meta.footer.unique_id)), writable=True)
        top.close()
        assert mid.pread(0, 512) == bytes(512)  # the caller's device still reads
    finally:
        mid.close()
    assert all(image._fd < 0 for image in mid.chain())


def test_a_read_only_open_releases_every_parent_on_close(chain: list[Path]) -> None:
    before = _open_fds()
    top = vhdtool.open(chain[2])
    assert len(_open_fds() - before) == 3
    top.close()
    assert _open_fds() == before
    open_image(chain[0], writable=True).close()  # no shared lock left on the base


def test_with_releases_the_whole_chain(chain: list[Path]) -> None:
    before = _open_fds()
    with vhdtool.open(chain[2], writable=True) as top:
        top.pwrite(0, b"y" * 512)
    assert _open_fds() == before
    open_image(chain[0], writable=True).close()


@pytest.mark.parametrize("damaged", [0, 1], ids=["base", "middle"])
def test_a_parent_failing_to_open_leaks_nothing(chain: list[Path], damaged: int) -> None:
    with open_image(chain[damaged], writable=True) as image:  # allocate block 0, then point it past the end
        image.pwrite(0, b"z" * 512)
    set_bat(chain[damaged], 0, 0x7FFFFFF0)
    before = _open_fds()
    with pytest.raises(CorruptImageError):
        open_image(chain[2])
    assert _open_fds() == before
    for path in chain[damaged + 1 :]:  # the layers opened before the failure hold no lock either
        with open(path, "rb+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_with_on_a_layer_over_a_held_device_leaves_that_device_open(chain: list[Path]) -> None:
    mid = open_image(chain[1])
    try:
        with open_over(chain[2], mid, uuid.UUID(bytes=bytes(mid.meta.footer.unique_id))) as top:
            assert top.layers()[1] is mid
        assert mid.pread(0, 512) == bytes(512)
    finally:
        mid.close()


def test_a_view_leaves_its_disk_open_and_close_chain_closes_all_below(chain: list[Path]) -> None:
    before = _open_fds()
    top = open_image(chain[2])
    view = PartitionView(top, MiB, 2 * MiB)
    view.close()
    assert top.pread(0, 512) == bytes(512)
    view.close_chain()
    assert _open_fds() == before
