"""The `vhdtool` program (`python -m vhdtool`, and the console script through ``main``): what the
process sets up before the CLI loads, then ``vhdtool.cli.main``.

Loading the CLI and a command creates some hundred thousand objects, almost none of them garbage,
and Python's cyclic collector, run after every 700 new ones, walks those that survive again and
again: several milliseconds of a short command such as `map` or `create`. The program raises that
first threshold for its whole run; long-running commands (serve, mount, run) still collect, after
every 10,000 new objects instead of 700. Code that runs ``vhdtool.cli.main`` in a process of its
own (tests, campaigns) keeps Python's defaults.
"""

from __future__ import annotations

import gc

FIRST_COLLECTION_THRESHOLD = 10_000


def main() -> None:
    gc.set_threshold(FIRST_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    from vhdtool.cli import main as run_cli  # click and the CLI load with the threshold raised

    run_cli()


if __name__ == "__main__":
    main()
