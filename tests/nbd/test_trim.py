"""TRIM: qemu-io's discard over NBD frees the image file's pages; the image stays clean."""

from __future__ import annotations

import os
from pathlib import Path

import vhdtool
from tests.helpers import need, run
from tests.helpers import vhdtool as cli
from tests.nbd.conftest import Serve

MiB = 1 << 20


def test_discard_frees_pages_of_a_dynamic_image(tmp_path: Path, serve: Serve) -> None:
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=16 * MiB)
    with vhdtool.open(img, writable=True) as image:
        image.pwrite(0, b"\x5a" * (8 * MiB))
    used_before = os.stat(img).st_blocks
    thread, uri = serve(img)
    out = run(need("qemu-io"), "-f", "raw", "-c", "discard 0 6M", "-c", "read -P 0x5a 7M 1M", uri).stdout
    assert "discarded" in out.lower() or "discard" in out.lower(), out
    assert "Pattern verification failed" not in out
    thread.stop()
    assert os.stat(img).st_blocks < used_before - 8 * 1024  # at least ~4 MiB of pages given back
    with vhdtool.open(img) as image:
        data = image.pread(0, 8 * MiB)
    assert data[7 * MiB :] == b"\x5a" * MiB  # outside the discarded range: untouched
    # the whole pages inside it read as zeros now (a block's data starts 512 bytes into a page)
    assert data[: 6 * MiB].count(0) >= 6 * MiB - 3 * 8192
    assert cli("check", img).returncode == 0  # no leak, no corruption


def test_trim_is_offered_only_where_the_device_can(tmp_path: Path, serve: Serve) -> None:
    img = tmp_path / "d.vhd"
    vhdtool.create(img, size=4 * MiB)
    _, rw = serve(img)
    _, ro = serve(tmp_path / "d.vhd", read_only=True)
    info_rw = run(need("nbdinfo"), rw).stdout
    info_ro = run(need("nbdinfo"), ro).stdout
    assert "can_trim: true" in info_rw
    assert "can_trim: false" in info_ro
