"""Bad input from the outside: every command that takes an image, given a directory, /dev/null, a
0-byte file, a 511-byte file, random bytes, a qcow2 image (not a VHD), and a file it may not read.

Each must exit non-zero with one error line and no traceback, and change no file.
"""

from __future__ import annotations

import functools
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

import vhdtool
from tests.helpers import digest, need, run

NOBODY = 65534


def _inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-directory").mkdir()
    (folder / "empty.vhd").write_bytes(b"")
    (folder / "short.vhd").write_bytes(os.urandom(511))
    (folder / "random.vhd").write_bytes(os.urandom(64 * 1024))
    run(need("qemu-img"), "create", "-q", "-f", "qcow2", folder / "disk.qcow2", "16M")
    secret = folder / "private" / "secret.vhd"
    secret.parent.mkdir(mode=0o700)
    run(need("qemu-img"), "create", "-q", "-f", "vpc", secret, "8M")
    secret.chmod(0o600)
    return {
        "directory": folder / "a-directory",
        "dev-null": Path("/dev/null"),
        "empty": folder / "empty.vhd",
        "511-bytes": folder / "short.vhd",
        "random": folder / "random.vhd",
        "qcow2": folder / "disk.qcow2",
        "no-permission": secret,
    }


# Each command line with {X} where the bad input goes; {O} is a fresh output path, {M} an empty folder.
COMMANDS: dict[str, list[str]] = {
    "info": ["info", "{X}"],
    "info-json": ["info", "--json", "{X}"],
    "info-chain": ["info", "--chain", "{X}"],
    "check": ["check", "{X}"],
    "map": ["map", "{X}"],
    "map-json": ["map", "--json", "{X}"],
    "compare": ["compare", "{X}", "{X}"],
    "convert-raw": ["convert", "-O", "raw", "{X}", "{O}"],
    "convert-vhd": ["convert", "{X}", "{O}.vhd"],
    "resize": ["resize", "{X}", "+1M"],
    "compact": ["compact", "{X}"],
    "merge": ["merge", "{X}"],
    "rebase": ["rebase", "{X}", "--parent", "{X}", "--unsafe"],
    "relink": ["relink", "{X}"],
    "repair": ["repair", "{X}"],
    "reset-id": ["reset-id", "{X}"],
    "create-child": ["create", "--parent", "{X}", "{O}.vhd"],
    "mount": ["mount", "{X}", "{M}"],
    "mount-raw": ["mount", "--raw", "{X}", "{M}"],
    "serve": ["serve", "{X}", "--socket", "{O}.sock"],
    "run": ["run", "{X}", "--timeout", "30"],
    "ls": ["ls", "{X}:/"],
    "cat": ["cat", "{X}:/file"],
    "cp-out": ["cp", "{X}:/file", "{O}"],
    "rm": ["rm", "{X}:/file"],
    "mkdir": ["mkdir", "{X}:/folder"],
    "snapshot-merge": ["snapshot", "merge", "{X}"],
    "snapshot-discard": ["snapshot", "discard", "{X}"],
}


def _digests(paths: list[Path]) -> dict[Path, str]:
    out = {}
    for p in paths:
        if p.is_file() and p != Path("/dev/null"):
            out[p] = digest(p)
    return out


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def _unprivileged_python() -> tuple[list[str], dict[str, str]] | None:
    """An interpreter that user nobody can run with vhdtool importable, or None.

    The venv's python may be a link into a folder only root can enter (pyenv under /root), so
    use the system python3 with the checkout and the venv's site-packages on PYTHONPATH.
    """
    repo = Path(vhdtool.__file__).resolve().parents[1]
    path = os.pathsep.join([str(repo), *site.getsitepackages()])
    for python in ("/usr/bin/python3", sys.executable):
        env = {**os.environ, "PYTHONPATH": path}
        probe = subprocess.run(
            [python, "-c", "import vhdtool.cli"], env=env, preexec_fn=_drop_to_nobody, capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return [python], env
    return None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _inputs(tmp_path_factory.mktemp("outside"))


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_every_command_refuses_bad_input_cleanly(command: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    before = _digests(list(inputs.values()))
    listing = {p: sorted(os.listdir(p)) for p in {i.parent for i in inputs.values()} if p != Path("/dev")}
    env = {**os.environ, "VHDTOOL_STATE_DIR": str(tmp_path / "state")}
    for name, bad in inputs.items():
        if name == "qcow2" and command.startswith("convert"):
            continue  # not bad input for convert: qemu-img reads it (tests/ops/test_foreign.py)
        mountpoint = tmp_path / f"mnt-{name}"
        mountpoint.mkdir()
        out = tmp_path / f"out-{name}"
        argv = [a.format(X=bad, O=out, M=mountpoint) for a in COMMANDS[command]]
        python, run_env = [sys.executable], env
        unprivileged = name == "no-permission" and os.geteuid() == 0
        if unprivileged:  # root reads anything: drop to nobody so the permission really bites
            found = _unprivileged_python()
            if found is None:
                continue  # reported by test_permission_case_can_run
            python, run_env = found[0], {**found[1], "VHDTOOL_STATE_DIR": env["VHDTOOL_STATE_DIR"]}
            os.chmod(tmp_path, 0o777)
            os.chmod(mountpoint, 0o777)
        result = subprocess.run(
            [*python, "-m", "vhdtool", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=run_env,
            preexec_fn=_drop_to_nobody if unprivileged else None,
            cwd=tmp_path,
        )
        where = f"{command} on {name}: {' '.join(argv)}"
        assert result.returncode != 0, f"{where} exited 0"
        assert "Traceback" not in result.stderr, f"{where} printed a traceback:\n{result.stderr}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("vhdtool: error:")]
        assert len(errors) == 1, f"{where}: expected one error line, got:\n{result.stderr}"
        assert not any(mountpoint.iterdir()), f"{where} left something in the mount point"
        assert not os.path.ismount(mountpoint), f"{where} left a mount"
    assert _digests(list(inputs.values())) == before, f"{command} changed an input file"
    for folder, names in listing.items():
        assert sorted(os.listdir(folder)) == names, f"{command} left files beside its inputs in {folder}"


def test_permission_case_can_run() -> None:
    """The no-permission input needs an interpreter user nobody can run (as root)."""
    if os.geteuid() != 0:
        pytest.skip("not root: the permission case runs as the current user")
    assert _unprivileged_python() is not None, "no interpreter that user nobody can run vhdtool with"
