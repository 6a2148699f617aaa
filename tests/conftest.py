"""Fixtures shared by the test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_qemu_image


@pytest.fixture
def qemu_image(tmp_path: Path) -> Path:
    """A dynamic VHD made and written by qemu-img / qemu-io (see make_qemu_image)."""
    img = tmp_path / "q.vhd"
    make_qemu_image(img)
    return img
