"""How the vhdtool command ends: at once when Python would have nothing left to do (output
flushed, exit status kept), through Python's usual exit when a thread or an exit handler waits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PRELUDE = """
import atexit, sys, threading, time
from vhdtool.cli import main
class Teardown:
    def __del__(self):
        print("teardown ran", file=sys.stderr)
kept = Teardown()
"""


def _command(extra: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    code = f"{_PRELUDE}{extra}\nsys.argv = ['vhdtool', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_a_finished_command_ends_at_once_with_its_output_and_status(tmp_path: Path) -> None:
    done = _command("", "--version")
    assert done.returncode == 0 and done.stdout.startswith("vhdtool, version")
    assert "teardown ran" not in done.stderr  # Python's teardown was skipped
    missing = _command("", "info", tmp_path / "missing.vhd")
    assert missing.returncode == 1 and "missing.vhd" in missing.stderr and "teardown ran" not in missing.stderr
    usage = _command("", "create", "--size", "nonsense", tmp_path / "x.vhd")
    assert usage.returncode == 64 and not (tmp_path / "x.vhd").exists()


def test_an_exit_handler_still_runs(tmp_path: Path) -> None:
    done = _command("atexit.register(lambda: print('handler ran', file=sys.stderr))", "--version")
    assert done.returncode == 0 and "handler ran" in done.stderr and "teardown ran" in done.stderr


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    thread = f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(marker)!r}, 'w').write('x'))).start()"
    done = _command(thread, "--version")
    assert done.returncode == 0 and marker.read_text() == "x"


def test_output_to_a_reader_that_went_away_ends_with_status_1(tmp_path: Path) -> None:
    image = tmp_path / "d.vhd"
    assert _command("", "create", "--size", "64G", image).returncode == 0
    code = f"{_PRELUDE}\nsys.argv = ['vhdtool', 'map', '--json', {str(image)!r}]\nmain()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads what map prints
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"Traceback" not in err


def test_the_program_raises_the_collectors_first_threshold_and_the_cli_alone_does_not() -> None:
    report = "atexit.register(lambda: print('threshold', __import__('gc').get_threshold()[0], file=sys.stderr))"
    for entry, expected in (("vhdtool.__main__", "10000"), ("vhdtool.cli", "700")):
        code = f"import atexit, sys\n{report}\nfrom {entry} import main\nsys.argv = ['vhdtool', '--version']\nmain()\n"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("vhdtool, version")
        assert f"threshold {expected}" in done.stderr
