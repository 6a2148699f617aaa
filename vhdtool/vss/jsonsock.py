"""A blocking JSON-message connection over a unix socket, with a deadline on every call: the
common ground of QMP and the QEMU guest agent protocol.

Every request carries an ``id`` that the peer echoes in its answer, so an answer that arrives
after its caller gave up (a freeze past its deadline) is recognised and skipped by the next call
instead of being taken for that call's answer. One call at a time per connection (a lock).
"""

from __future__ import annotations

import codecs
import itertools
import json
import socket
import threading
import time
from typing import Any

from vhdtool.vss.plugin import HypervisorError, OperationTimeout

_decoder = json.JSONDecoder()


class PeerError(HypervisorError):
    """The peer answered a request with an error."""

    def __init__(self, command: str, klass: str, desc: str) -> None:
        super().__init__(f"{command}: {desc} ({klass})")
        self.klass = klass
        self.desc = desc


class JsonSocket:
    def __init__(self, path: str, timeout: float, what: str) -> None:
        self.path = path
        self.what = what
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(max(timeout, 0.001))
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise HypervisorError(f"{what} {path}: cannot connect: {e.strerror or e}") from None
        self._text = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._ids = itertools.count(1)
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def send_raw(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise HypervisorError(f"{self.what} {self.path}: {e.strerror or e}") from None

    def read_message(self, deadline: float) -> dict[str, Any]:
        """The next JSON object from the peer; 0xFF bytes (the agent's sync delimiter, invalid in
        UTF-8, so decoded as U+FFFD) and whitespace between messages are skipped."""
        while True:
            self._text = self._text.lstrip("\ufffd \t\r\n")
            if self._text:
                try:
                    doc, end = _decoder.raw_decode(self._text)
                except ValueError:
                    pass  # incomplete: read more
                else:
                    self._text = self._text[end:]
                    if isinstance(doc, dict):
                        return doc
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimeout(f"{self.what} {self.path}: no answer in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise OperationTimeout(f"{self.what} {self.path}: no answer in time") from None
            except OSError as e:
                raise HypervisorError(f"{self.what} {self.path}: {e.strerror or e}") from None
            if not chunk:
                raise HypervisorError(f"{self.what} {self.path}: connection closed")
            self._text += self._utf8.decode(chunk)

    def call(self, command: str, arguments: dict[str, Any] | None, timeout: float, prefix: bytes = b"") -> Any:
        """Send ``command`` and wait for its own answer; earlier late answers and events are
        skipped (events are kept in ``events``)."""
        with self.lock:
            request_id = f"vhdtool-{next(self._ids)}"
            request: dict[str, Any] = {"execute": command, "id": request_id}
            if arguments:
                request["arguments"] = arguments
            self.send_raw(prefix + json.dumps(request).encode() + b"\n")
            deadline = time.monotonic() + timeout
            while True:
                msg = self.read_message(deadline)
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if msg.get("id") != request_id:
                    continue  # the answer to a call that already gave up
                if "error" in msg:
                    err = msg["error"] or {}
                    raise PeerError(command, str(err.get("class", "")), str(err.get("desc", err)))
                return msg.get("return")

    def close(self) -> None:
        self._sock.close()
