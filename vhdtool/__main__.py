"""`python -m vhdtool` runs the vhdtool program."""

from vhdtool.console import main

main()
