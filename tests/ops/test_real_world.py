"""Disks as users meet them: a child without its parent, a chain copied elsewhere, refusals for
safety, long commands on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import click

import vhdtool
from tests.helpers import VHDTOOL, need, run
from tests.helpers import vhdtool as cli
from tests.ops.oputil import digest, folder_digests, make_chain, read_all
from vhdtool.format.rules import MiB


def _orphan(tmp_path: Path) -> Path:
    _, mid, top = make_chain(tmp_path, 2)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(top, lone / top.name)
    mid.unlink()
    return lone / top.name


def test_an_orphan_is_described_not_refused(tmp_path: Path) -> None:
    child = _orphan(tmp_path)
    qemu = json.loads(run(need("qemu-img"), "info", "-f", "vpc", "--output=json", child).stdout)
    info = cli("info", "--json", child)
    doc = json.loads(info.stdout)
    assert info.returncode == 0 and "parent disk not found" in doc["warnings"][0]
    assert "parent disk not found" in cli("info", child).stderr
    assert doc["virtual-size"] == qemu["virtual-size"] and doc["backing-filename"] == "layer1.vhd"
    assert "full-backing-filename" not in doc
    chain = json.loads(cli("info", "--json", "--chain", child).stdout)
    assert len(chain) == 1  # as far as the chain goes
    check = cli("check", "--json", child)
    assert check.returncode == 1 and json.loads(check.stdout)["check-errors"] == 1


def test_map_of_an_orphan_marks_what_the_parent_held(tmp_path: Path) -> None:
    child = _orphan(tmp_path)
    result = cli("map", "--json", child)
    assert result.returncode == 0 and "parent disk not found" in result.stderr
    runs = json.loads(result.stdout)
    own = [r for r in runs if r["data"]]
    missing = [r for r in runs if r.get("parent-missing")]
    assert own and missing and all(r["file"].endswith("layer2.vhd") for r in own)
    assert sum(r["length"] for r in runs) == 24 * MiB
    assert all(not r["present"] and not r["zero"] for r in missing)


def test_relink_settles_a_copied_chain(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    *_, top = make_chain(tmp_path / "a", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new file times
    os.utime(tmp_path / "b" / "base.vhd", (1, 1))
    copy = tmp_path / "b" / top.name
    assert "modified" in cli("info", copy).stderr
    result = cli("relink", "--check-content", copy)  # the original is where the old locators point
    assert result.returncode == 0, result.stderr
    assert "modified" not in cli("info", copy).stderr and read_all(copy) == read_all(top)
    assert json.loads(cli("check", "--json", copy).stdout)["findings"] == []


def test_rebase_unsafe_records_the_parent_time_stamp(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    expected = read_all(child)
    os.utime(base, (1, 1))
    assert "modified" in cli("info", child).stderr
    assert cli("rebase", "--unsafe", child, "--parent", base).returncode == 0
    assert "modified" not in cli("info", child).stderr and read_all(child) == expected
    vhdtool.create(tmp_path / "stranger.vhd", size=24 * MiB)
    before = folder_digests(tmp_path)
    assert cli("relink", child, "--parent", tmp_path / "stranger.vhd").returncode == 1  # UUID checked first
    assert folder_digests(tmp_path) == before


def test_relink_check_content_refuses_a_changed_copy(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    *_, top = make_chain(tmp_path / "a", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with vhdtool.open(tmp_path / "b" / "base.vhd", writable=True) as base:
        base.pwrite(20 * MiB, b"changed")
    before = folder_digests(tmp_path / "b")
    result = cli("relink", "--check-content", tmp_path / "b" / top.name)
    assert result.returncode == 1 and "does not read as" in result.stderr
    assert folder_digests(tmp_path / "b") == before


def test_safety_refusals_exit_1(tmp_path: Path) -> None:
    base, child = make_chain(tmp_path, 1)
    vhdtool.create(tmp_path / "other.vhd", parent=base)
    before = folder_digests(tmp_path)
    merged = cli("merge", child)
    assert merged.returncode == 1 and "other differencing disks depend on it" in merged.stderr
    size = 24 * MiB
    vhdtool.create(tmp_path / "d.vhd", size=size)
    with vhdtool.open(tmp_path / "d.vhd", writable=True) as img:
        img.pwrite(size - 4096, b"x" * 4096)
    shrunk = cli("resize", tmp_path / "d.vhd", "-1M")
    assert shrunk.returncode == 1 and "--force" in shrunk.stderr
    assert {k: v for k, v in folder_digests(tmp_path).items() if k != "d.vhd"} == before
    assert "Exit status" in cli("merge", "--help").stdout


def test_long_commands_draw_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(64 * MiB))
    command = " ".join([*VHDTOOL, "build", str(tmp_path / "t.vhd"), "--from-dir", str(tree)])
    shown = subprocess.run([need("script"), "-qec", command, "/dev/null"], capture_output=True, text=True)
    assert shown.returncode == 0 and "━" in shown.stdout, shown.stdout[-500:]
    piped = cli("build", tmp_path / "p.vhd", "--from-dir", tree)
    assert piped.returncode == 0 and "━" not in piped.stdout + piped.stderr
    (tmp_path / "more.bin").write_bytes(os.urandom(32 * MiB))
    assert cli("build", tmp_path / "room.vhd", "--from-dir", tree, "--size", "256M").returncode == 0
    for args in (
        ["map", tmp_path / "t.vhd"],
        ["compare", tmp_path / "t.vhd", tmp_path / "p.vhd"],
        ["cp", tmp_path / "more.bin", f"{tmp_path / 'room.vhd'}:/more.bin"],
        ["cp", f"{tmp_path / 'room.vhd'}:/big.bin", tmp_path / "out.bin"],
    ):
        command = " ".join(map(str, [*VHDTOOL, *args]))
        shown = subprocess.run([need("script"), "-qec", command, "/dev/null"], capture_output=True, text=True)
        assert "━" in shown.stdout, (args, shown.stdout[-500:])
    assert (tmp_path / "out.bin").read_bytes() == (tree / "big.bin").read_bytes()


def test_small_things_say_what_they_found(tmp_path: Path) -> None:
    run(need("qemu-img"), "create", "-f", "vhdx", tmp_path / "x.vhdx", "8M")
    run(need("qemu-img"), "create", "-f", "qcow2", tmp_path / "x.qcow2", "8M")
    for command in ("info", "check"):
        for name, kind in (("x.vhdx", "VHDX"), ("x.qcow2", "qcow2")):
            result = cli(command, tmp_path / name)
            assert result.returncode == 1 and f"this is a {kind} file" in result.stderr, result.stderr
    (tmp_path / "dir.vhd").mkdir()
    listed = cli("ls", f"{tmp_path / 'dir.vhd'}:/")
    assert listed.returncode == 64 and "is a folder, not a disk image" in listed.stderr
    vhdtool.create(tmp_path / "f.vhd", size=4 * MiB, type="fixed")
    assert "blocks allocated" not in cli("check", tmp_path / "f.vhd").stdout
    plugins = cli("snapshot", "hypervisors").stdout.splitlines()  # piped: one whole line per plugin
    assert any(line.startswith("simulated (test plugin") for line in plugins) and "━" not in "".join(plugins)
    from vhdtool.cli import snapshot

    for name, command in snapshot.commands.items():  # every subcommand and option explains itself
        assert command.help, name
        assert all(p.help for p in command.params if isinstance(p, click.Option)), name


def test_mount_needs_no_extra() -> None:
    """`pip install vhdtool` alone brings the FUSE binding `vhdtool mount` uses."""
    from importlib.metadata import requires

    core = [r for r in requires("vhdtool") or [] if "extra ==" not in r]
    assert any(r.startswith("mfusepy") for r in core), core


def test_relink_writes_no_parent_whose_own_link_works(tmp_path: Path) -> None:
    """Found by the safety campaign: a child elsewhere whose parent is a middle disk of a chain;
    relink of the child rewrote that parent (its locators and time stamp), a file the user did
    not name. Only --chain relinks the disks below the child."""
    (tmp_path / "a").mkdir()
    base, mid = make_chain(tmp_path / "a", 1)
    os.utime(base, (1, 1))  # the middle disk's stamp no longer matches: --chain would record it
    (tmp_path / "b").mkdir()
    child = tmp_path / "b" / "child.vhd"
    vhdtool.create(child, parent=mid)
    before = folder_digests(tmp_path / "a")
    result = cli("relink", child)
    assert result.returncode == 0, result.stderr
    assert folder_digests(tmp_path / "a") == before
    assert result.stdout.strip() == f"{child} -> {mid}"
    assert cli("relink", "--chain", child).returncode == 0
    assert digest(mid) != before[mid.name] and "modified" not in cli("info", mid).stderr
