"""When `vhdtool create` flushes: like qemu-img create, a new file is left to the page cache unless
--sync asks; a file it replaces is flushed first; the layers that writes land in always are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import flushes, need, run
from tests.helpers import vhdtool as cli
from vhdtool.ops.create import create
from vhdtool.ops.overlay import create_overlay


def _qemu_reads(path: Path) -> str:
    return run(need("qemu-img"), "info", "--output=json", "-f", "vpc", path).stdout


def test_a_new_file_is_flushed_only_when_asked(tmp_path: Path) -> None:
    new = tmp_path / "new.vhd"
    assert flushes(tmp_path, "create", "--size", "1G", new) == ["rename"]
    assert '"virtual-size": 1073741824' in _qemu_reads(new)
    new.unlink()
    synced = flushes(tmp_path, "create", "--sync", "--size", "1G", new)
    assert synced[1:] == ["rename", "fsync-folder"]
    assert synced[0].startswith(f"fsync .{new.name}.") and synced[0].endswith(".tmp")


def test_a_replaced_file_is_flushed_before_the_rename(tmp_path: Path) -> None:
    old = tmp_path / "old.vhd"
    old.write_bytes(b"old")
    for kind in ("dynamic", "fixed"):
        replaced = flushes(tmp_path, "create", "--force", "--type", kind, "--size", "64M", old)
        assert replaced[1:] == ["rename", "fsync-folder"] and replaced[0].startswith(f"fsync .{old.name}.")
        assert '"virtual-size": 67108864' in _qemu_reads(old)


def test_an_overlay_is_flushed_before_writes_can_land_in_it(tmp_path: Path) -> None:
    base = tmp_path / "base.vhd"
    create(base, size="64M")
    name = create_overlay.__name__
    script = f"import sys; from vhdtool.ops.overlay import {name}; {name}(*sys.argv[1:])"
    child = tmp_path / "base.undo.vhd"
    seen = flushes(tmp_path, "-c", script, base, child, program=[sys.executable])
    assert seen[1:] == ["rename", "fsync-folder"] and seen[0].startswith(f"fsync .{child.name}.")
    assert json.loads(cli("info", "--json", child).stdout)["full-backing-filename"] == str(base)
