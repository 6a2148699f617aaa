"""`python -m vhdtool` runs the CLI."""

from vhdtool.cli import main

main()
