"""A deliberately small NBD client over a raw socket, for sending what real clients never send.

It speaks just enough of the protocol to reach any state (after the greeting, after GO with or
without structured replies) and then lets a test write arbitrary bytes and read the answers.
Well-formed traffic is tested with real clients (qemu-img, qemu-io, nbdinfo, nbdcopy, libnbd).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from vhdtool.nbd import protocol as p


class Closed(Exception):
    """The server closed the connection."""


@dataclass
class Reply:
    handle: int
    error: int
    kind: int = 0  # structured chunk type; 0 for simple replies
    done: bool = True
    payload: bytes = b""


class RawClient:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.structured = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise Closed(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def closed_by_server(self) -> bool:
        """True once the server has hung up (reads the stream to its end)."""
        try:
            while self.sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def greeting(self) -> None:
        magic, opt, _flags = struct.unpack(">QQH", self.recv_exact(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        self.send(struct.pack(">I", p.ClientFlag.FIXED_NEWSTYLE | p.ClientFlag.NO_ZEROES))

    def option(self, option: int, data: bytes = b"") -> None:
        self.send(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, reply, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == p.OPTION_REPLY_MAGIC
        return option, reply, self.recv_exact(length)

    def replies_until_final(self) -> list[tuple[int, bytes]]:
        """(reply type, payload) of every reply to one option, up to ACK or an error."""
        out = []
        while True:
            _, reply, payload = self.option_reply()
            out.append((reply, payload))
            if reply == p.Rep.ACK or reply & (1 << 31):
                return out

    def go(self, name: str = "", structured: bool = True, allocation: bool = True) -> tuple[int, int]:
        """Negotiate up to transmission; returns (size, transmission flags)."""
        self.greeting()
        if structured:
            self.option(p.Opt.STRUCTURED_REPLY)
            assert self.replies_until_final()[-1][0] == p.Rep.ACK
            self.structured = True
        raw = name.encode()
        if allocation:
            query = p.BASE_ALLOCATION.encode()
            data = struct.pack(">I", len(raw)) + raw + struct.pack(">II", 1, len(query)) + query
            self.option(p.Opt.SET_META_CONTEXT, data)
            self.replies_until_final()
        self.option(p.Opt.GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        size = flags = -1
        for reply, payload in self.replies_until_final():
            assert reply in (p.Rep.INFO, p.Rep.ACK), reply
            if reply == p.Rep.INFO and struct.unpack(">H", payload[:2])[0] == p.Info.EXPORT:
                size, flags = struct.unpack(">QH", payload[2:])
        return size, flags

    def request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        *,
        flags: int = 0,
        handle: int = 1,
        payload: bytes = b"",
        magic: int = p.REQUEST_MAGIC,
    ) -> None:
        self.send(p.REQUEST.pack(magic, flags, cmd, handle, offset, length) + payload)

    def reply(self, read_length: int = 0) -> Reply:
        """One simple reply (with ``read_length`` data bytes if it succeeded) or one chunk."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == p.SIMPLE_REPLY_MAGIC:
            error, handle = struct.unpack(">IQ", self.recv_exact(12))
            return Reply(handle, error, payload=b"" if error else self.recv_exact(read_length))
        assert magic == p.STRUCTURED_REPLY_MAGIC, hex(magic)
        flags, kind, handle, length = struct.unpack(">HHQI", self.recv_exact(16))
        payload = self.recv_exact(length)
        error = struct.unpack(">I", payload[:4])[0] if kind & (1 << 15) else 0
        return Reply(handle, error, kind, bool(flags & p.REPLY_FLAG_DONE), payload)

    def chunks(self) -> list[Reply]:
        """Every chunk of one structured reply, up to the one marked done."""
        out = [self.reply()]
        while not out[-1].done:
            out.append(self.reply())
        return out
