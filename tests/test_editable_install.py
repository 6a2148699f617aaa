"""An editable install (`pip install -e .`, what the README, CI and the acceptance checks use) leaves
every module of the checkout compiled, so the vhdtool command starts from bytecode even where
PYTHONDONTWRITEBYTECODE keeps Python from writing it; and the wheel does not carry the build hook."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _copy_of_checkout(dest: Path) -> Path:
    """The files a build reads, without any bytecode the running tests left behind."""
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest)
    shutil.copy(ROOT / "README.md", dest)
    shutil.copytree(ROOT / "vhdtool", dest / "vhdtool", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _pip(*args: str | Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pip", "-q", *map(str, args)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_editable_install_compiles_every_module(tmp_path: Path) -> None:
    tree = _copy_of_checkout(tmp_path / "tree")
    # --ignore-installed: without it pip first uninstalls the vhdtool that runs these tests
    _pip("install", "--no-deps", "--ignore-installed", "--prefix", tmp_path / "prefix", "-e", tree)
    sources = sorted((tree / "vhdtool").rglob("*.py"))
    missing = [p for p in sources if not Path(importlib.util.cache_from_source(str(p))).is_file()]
    assert sources and not missing, missing


def test_wheel_leaves_the_build_hook_out(tmp_path: Path) -> None:
    tree = _copy_of_checkout(tmp_path / "tree")
    _pip("wheel", "--no-deps", "-w", tmp_path / "dist", tree)
    (wheel,) = (tmp_path / "dist").glob("vhdtool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vhdtool/cli/__init__.py" in names
    assert not [n for n in names if "_editable_bytecode" in n or n.endswith(".pyc")]
