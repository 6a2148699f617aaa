"""What the vhdtool command loads before it does its work: only the module of the command run,
no rich for one-line or JSON results, the standard modules construct imports for rare paths
only when they are used, and none of the modules a command's path never calls (the checker, the
parent locators of a disk that has no parent, qemu-img's helpers, json without --json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import vhdtool as cli
from vhdtool.cli import COMMANDS
from vhdtool.cli import cli as root

# Runs the command in-process as the console script does, then reports which modules it loaded
# and which of them are still deferred (loaded on first use); json only after the count.
_RUN = """
import atexit, sys
from vhdtool.cli import main
def report():
    modules = sorted(sys.modules)
    deferred = [n for n, m in sys.modules.items() if type(m).__name__ == "DeferredModule"]
    import json
    print(json.dumps({"modules": modules, "deferred": sorted(deferred)}), file=sys.stderr)
atexit.register(report)
sys.argv = ["vhdtool", *sys.argv[1:]]
main()
"""


def _loaded(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    done = subprocess.run([sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True)
    return done, json.loads(done.stderr.splitlines()[-1])


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return set(done.stdout.split())


def test_import_vhdtool_loads_no_library_module() -> None:
    loaded = _modules_after("import vhdtool")
    assert {m for m in loaded if m.startswith("vhdtool.")} == {"vhdtool.mount"}  # the empty subpackage only
    assert not {"click", "construct", "rich"} & loaded


def test_import_cli_loads_no_command_module() -> None:
    loaded = _modules_after("import vhdtool.cli")
    modules = {target.partition(":")[0] for target in COMMANDS.values()}
    assert not modules & loaded
    assert not {"construct", "rich", "vhdtool.format.rules"} & loaded


def test_create_loads_its_own_family_and_defers_what_it_does_not_use(tmp_path: Path) -> None:
    done, seen = _loaded("create", "--force", tmp_path / "x.vhd")
    assert done.returncode == 0, done.stderr
    modules = set(seen["modules"])
    assert "vhdtool.cli.images" in modules and "construct" in modules
    others = {target.partition(":")[0] for target in COMMANDS.values()} - {"vhdtool.cli.images"}
    assert not others & modules and "rich" not in modules
    assert {"pdb", "pickle"} <= set(seen["deferred"])  # imported by construct, never run


def test_map_json_prints_without_rich(tmp_path: Path) -> None:
    assert cli("create", "--size", "1G", tmp_path / "d.vhd").returncode == 0
    done, seen = _loaded("map", "--json", tmp_path / "d.vhd")
    assert done.returncode == 0 and json.loads(done.stdout) is not None
    assert "rich" not in seen["modules"]


# Loaded on no path of the four commands below: the record types are NamedTuples or plain classes,
# the checker loads for writers and damaged images only, qemu-img's helpers for other formats only.
_NEVER = {"dataclasses", "vhdtool.format.validate", "subprocess", "tempfile", "shutil"}
_PARENT_LINK = {"vhdtool.format.locators"}  # a disk with no parent has no locators to decode


def test_quick_commands_load_nothing_their_path_does_not_call(tmp_path: Path) -> None:
    disk = tmp_path / "d.vhd"
    for args, unused in (
        (("create", disk), _NEVER | _PARENT_LINK),
        (("map", "--json", disk), _NEVER | _PARENT_LINK | {"vhdtool.ops.datapath", "vhdtool.format.rewrite"}),
        (("map", disk), {"json"}),
        (("compare", disk, disk), _NEVER | _PARENT_LINK | {"json"}),
        (("convert", "-O", "raw", disk, tmp_path / "d.raw"), _NEVER | _PARENT_LINK | {"json"}),
    ):
        done, seen = _loaded(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert not unused & set(seen["modules"]), (args, unused & set(seen["modules"]))
    done, seen = _loaded("map", "--json", disk)
    assert "json" in seen["modules"]  # the harness itself does not load it: the check above can fail


def test_a_child_loads_its_parent_link(tmp_path: Path) -> None:
    assert cli("create", "--size", "1G", tmp_path / "p.vhd").returncode == 0
    done, seen = _loaded("create", "--parent", tmp_path / "p.vhd", tmp_path / "c.vhd")
    assert done.returncode == 0, done.stderr
    assert set(seen["modules"]) >= _PARENT_LINK
    done, seen = _loaded("map", "--json", tmp_path / "c.vhd")
    assert done.returncode == 0 and json.loads(done.stdout)[0]["depth"] == 1, done.stdout
    assert set(seen["modules"]) >= _PARENT_LINK and not _NEVER & set(seen["modules"])


_FIRST_USE = """
import sys, threading
from vhdtool.cli import demand
demand.install()
import construct, hashlib, pickle, pdb
assert type(sys.modules["pickle"]) is demand.DeferredModule, type(sys.modules["pickle"])
assert type(sys.modules["pdb"]) is demand.DeferredModule
# many threads touch the deferred module at once: every one sees it whole
start, results = threading.Barrier(16), []
def use():
    start.wait()
    results.append(pickle.loads(pickle.dumps({"a": [1, 2]})))
threads = [threading.Thread(target=use) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
assert results == [{"a": [1, 2]}] * 16, results
assert type(pickle) is type(sys)  # a plain module once loaded
assert hashlib.sha256(b"").hexdigest().startswith("e3b0c442")
assert pdb.Pdb.__name__ == "Pdb" and pdb.__loader__.get_source("pdb")  # the real loader again
import shutil
assert ("xztar", "xz'ed tar-file") in shutil.get_archive_formats()
print("ok")
"""


def test_deferred_modules_load_on_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", _FIRST_USE], capture_output=True, text=True)
    assert done.stdout == "ok\n", done.stderr


def test_every_command_is_where_the_table_says() -> None:
    for name in COMMANDS:
        command = root.get_command(None, name)
        assert command is not None and command.name == name, name
    listed = cli("--help").stdout
    assert all(f"  {name} " in listed for name in COMMANDS)


def test_a_mistyped_command_is_offered_every_close_name() -> None:
    done = cli("crate", "x.vhd")
    assert done.returncode == 64 and "'create'" in done.stderr, done.stderr
