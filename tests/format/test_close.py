"""close() releases what an image owns: its file and lock, and the parents it opened itself."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import vhdtool
from vhdtool.errors import LockedError
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
