"""The guest's serial console: streamed to the terminal, searched for ``--expect``, remembered
for error messages; and, with ``--console``, the terminal's keys sent back to the guest."""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import re
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import BinaryIO

WINDOW = 64 << 10
"""Characters of recent output an --expect pattern is matched against (it may span lines)."""

ESCAPE = b"\x1d"
"""Ctrl-] ends an interactive console (and the guest), as in telnet and virsh console."""


_NOT_AN_END = "\uffff"
"""Appended before searching, so that ``$`` matches at the end of a line the guest finished, not
at the end of a line still arriving (``MARKER-fro`` of ``MARKER-fromchild``)."""


class ConsoleLog:
    """Output of the guest: written through to ``out``, matched against ``expect``."""

    def __init__(self, out: BinaryIO | None, expect: re.Pattern[str] | None, keep_lines: int = 15) -> None:
        self.out = out
        self.expect = expect
        self.matched: re.Match[str] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._window = ""
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._partial = ""

    def feed(self, data: bytes) -> bool:
        """Take a chunk of output; True once ``expect`` has matched."""
        if self.out is not None:
            self.out.write(data)
            self.out.flush()
        text = self._decoder.decode(data).replace("\r", "")  # serial lines end in \r\n
        self._keep_lines(text)
        if self.expect is not None and self.matched is None:
            self._window = (self._window + text)[-WINDOW:]
            self.matched = self.expect.search(self._window + _NOT_AN_END)
        return self.matched is not None

    def _keep_lines(self, text: str) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        self._lines.extend(line for line in complete if line.strip())

    def end_line(self) -> None:
        """Finish the line the guest left open, so that what vhdtool prints next starts a line."""
        if self._partial and self.out is not None:
            self.out.write(b"\n")
            self.out.flush()
            self._lines.append(self._partial)
            self._partial = ""

    def last_lines(self) -> list[str]:
        """The last non-blank lines, the one still arriving included."""
        lines = list(self._lines)
        if self._partial.strip():
            lines.append(self._partial)
        return lines[-(self._lines.maxlen or 1) :]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Put the terminal ``fd`` into raw mode (keys go to the guest unprocessed, Ctrl-C included)
    and restore it afterwards; yields whether it is a terminal at all."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def keys_forwarder(
    fd: int, send: Callable[[bytes], None], on_escape: Callable[[], None], on_eof: Callable[[], None]
) -> Callable[[], None]:
    """A reader callback for ``loop.add_reader(fd, ...)``: forwards what the user types, stops
    at Ctrl-] (on a terminal)."""
    interactive = os.isatty(fd)

    def read() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            on_eof()
            return
        if interactive and ESCAPE in data:
            before = data.split(ESCAPE, 1)[0]
            if before:
                send(before)
            on_escape()
            return
        send(data)

    return read


def stdout_binary() -> BinaryIO:
    return sys.stdout.buffer
