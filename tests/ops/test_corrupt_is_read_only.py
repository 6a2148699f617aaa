"""One rule for every writer: an image that `check` calls corrupt is opened read-only.

Every writing command is swept over the same set of damaged images (made by qemu-img and
qemu-io, then damaged the way real files are): each must refuse with check's finding and
"run 'vhdtool repair'" in one error line, exit 1, and leave every file in the folder as it was.
`repair` is the one writer allowed in; it must keep what qemu-img reads except what it lists.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import VHDTOOL, get_bat, make_qemu_image, need, patch_footer, patch_header, qemu_raw, run, set_bat
from tests.helpers import vhdtool as cli
from tests.ops.oputil import folder_digests
from vhdtool.format.metadata import read_metadata
from vhdtool.format.rules import MiB
from vhdtool.format.validate import first_corruption

BLOCK = 2 * MiB


def _bat_into_header(img: Path) -> None:
    set_bat(img, 1, 1)


def _bat_past_end(img: Path) -> None:
    set_bat(img, 0, 0x00FFFFFF)


def _blocks_overlap(img: Path) -> None:
    set_bat(img, 1, get_bat(img, 0) + 8)


def _block_size_field(img: Path) -> None:
    patch_header(img, 32, bytes.fromhex("80000000"))


def _block_size_halved(img: Path) -> None:
    patch_header(img, 32, (BLOCK // 2).to_bytes(4, "big"))


def _footer_checksum(img: Path) -> None:
    patch_footer(img, fix_checksum=False, original_size=1234)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "bat-into-header": _bat_into_header,
    "bat-past-end": _bat_past_end,
    "blocks-overlap": _blocks_overlap,
    "block-size-invalid": _block_size_field,
    "block-size-wrong": _block_size_halved,
    "footer-checksum": _footer_checksum,
}


def _damaged_base(tmp_path: Path, damage: str, child: Path | None = None) -> Path:
    img = tmp_path / "base.vhd"
    make_qemu_image(img)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x11 0 1M", img)  # blocks 0..2 allocated
    if child is not None:
        vhdtool.create(child, parent=img)
    DAMAGES[damage](img)
    assert first_corruption(read_metadata(img)) is not None
    return img


def _damaged_child(tmp_path: Path, damage: str) -> Path:
    base = tmp_path / "base.vhd"
    make_qemu_image(base)
    child = tmp_path / "child.vhd"
    vhdtool.create(child, parent=base)
    with vhdtool.open(child, writable=True) as img:
        img.pwrite(0, b"\x22" * (5 * MiB))
        img.flush()
    DAMAGES[damage](child)
    return child


def _assert_refused(result: subprocess.CompletedProcess[str], img: Path) -> None:
    finding = first_corruption(read_metadata(img))
    assert finding is not None
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    # the writable open names check's finding; a read-only open of a parent refuses a BAT entry
    # past the end of the file itself, naming the entry
    named = finding.message in result.stderr or f"BAT entry {finding.block} points" in result.stderr
    assert named and "'vhdtool repair'" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


BASE_COMMANDS: dict[str, list[str]] = {
    "compact": ["compact", "{img}"],
    "resize-grow": ["resize", "{img}", "+16M"],
    "resize-shrink": ["resize", "{img}", "-1M", "--force"],
    "reset-id": ["reset-id", "{img}"],
    "cp": ["cp", "{src}", "{img}:/x"],
    "rm": ["rm", "{img}:/x"],
    "mkdir": ["mkdir", "{img}:/d"],
    "merge-into": ["merge", "{child}"],
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", BASE_COMMANDS)
def test_writers_refuse_a_corrupt_image(tmp_path: Path, damage: str, command: str) -> None:
    child = tmp_path / "c.vhd"  # merge-into: the child is sound, the disk it goes into is not
    img = _damaged_base(tmp_path, damage, child if command == "merge-into" else None)
    (tmp_path / "src.txt").write_text("x")
    before = folder_digests(tmp_path)
    args = [a.format(img=img, src=tmp_path / "src.txt", child=child) for a in BASE_COMMANDS[command]]
    _assert_refused(cli(*args), img)
    assert folder_digests(tmp_path) == before


CHILD_COMMANDS: dict[str, list[str]] = {
    "relink": ["relink", "{img}"],
    "rebase": ["rebase", "{img}", "--parent", "{other}"],
    "rebase-unsafe": ["rebase", "--unsafe", "{img}", "--parent", "{other}"],
    "reset-id": ["reset-id", "{img}"],
    "compact": ["compact", "{img}"],
    "merge": ["merge", "{img}"],  # its data would go into the parent
}


@pytest.mark.parametrize("damage", ["bat-into-header", "blocks-overlap", "block-size-wrong", "footer-checksum"])
@pytest.mark.parametrize("command", CHILD_COMMANDS)
def test_writers_refuse_a_corrupt_child(tmp_path: Path, damage: str, command: str) -> None:
    child = _damaged_child(tmp_path, damage)
    other = tmp_path / "other.vhd"
    vhdtool.create(other, size=read_metadata(child).virtual_size)
    before = folder_digests(tmp_path)
    args = [a.format(img=child, other=other) for a in CHILD_COMMANDS[command]]
    _assert_refused(cli(*args), child)
    assert folder_digests(tmp_path) == before


def _state_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VHDTOOL_STATE_DIR": str(tmp_path / "state"), "VHDTOOL_RUNTIME_DIR": str(tmp_path / "run")}


@pytest.mark.parametrize("damage", DAMAGES)
def test_serve_and_mount_refuse_a_corrupt_image(tmp_path: Path, damage: str) -> None:
    img = _damaged_base(tmp_path, damage)
    (tmp_path / "m").mkdir()
    before = folder_digests(tmp_path)
    env = _state_env(tmp_path)
    served = subprocess.run(
        [*VHDTOOL, "serve", img, "--socket", tmp_path / "s.sock"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    _assert_refused(served, img)
    mounted = subprocess.run(
        [*VHDTOOL, "mount", "--raw", img, tmp_path / "m"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    _assert_refused(mounted, img)
    assert folder_digests(tmp_path) == before
    try:
        vhdtool.open(img).close()
    except vhdtool.VhdError:
        return  # no block can be found (a block size or BAT that cannot describe the disk): no reader
    assert "--read-only" in mounted.stderr
    # read-only uses still work: what check calls corrupt can still be looked at and rescued
    served_ro = subprocess.Popen(
        [*VHDTOOL, "serve", "--read-only", img, "--socket", tmp_path / "s.sock"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert served_ro.stdout is not None
        assert served_ro.stdout.readline().startswith("nbd+unix://"), served_ro.stderr
    finally:
        served_ro.terminate()
        served_ro.wait(timeout=30)
    assert folder_digests(tmp_path) == before


_CLEARED = re.compile(r"disk bytes (\d+)-(\d+) (?:now )?read")


@pytest.mark.parametrize("damage", DAMAGES)
def test_repair_keeps_what_it_does_not_list(tmp_path: Path, damage: str) -> None:
    """repair is let in: what qemu-img reads afterwards differs from the undamaged image only in
    the ranges the dry run and the real run list, and both list the same."""
    img = tmp_path / "base.vhd"
    make_qemu_image(img)
    run(need("qemu-io"), "-f", "vpc", "-c", "write -P 0x11 0 1M", img)
    want = qemu_raw(img, tmp_path)
    DAMAGES[damage](img)
    dry = cli("repair", "--dry-run", img)
    real = cli("repair", img)
    assert "Traceback" not in dry.stderr + real.stderr
    assert [line.removeprefix("would: ") for line in dry.stdout.splitlines()] == [
        line for line in real.stdout.splitlines() if not line.startswith(("metadata saved", "reclaimed"))
    ]
    assert os.path.getsize(img) > 5 * MiB  # never the data thrown away with the metadata
    if real.returncode != 0:
        return  # refused, or damage left and reported: check still calls it corrupt
    got = bytearray(qemu_raw(img, tmp_path))
    expected = bytearray(want)
    for first, last in _CLEARED.findall(real.stdout):  # listed as reading zeros from now on
        expected[int(first) : int(last) + 1] = bytes(int(last) + 1 - int(first))
    assert got == expected
