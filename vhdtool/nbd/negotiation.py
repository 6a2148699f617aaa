"""The handshake phase: fixed newstyle negotiation up to NBD_OPT_GO or NBD_OPT_EXPORT_NAME.

Options carry untrusted lengths: every payload is bounded (a larger one is skipped in small reads
and answered with NBD_REP_ERR_TOO_BIG) and parsed strictly; anything malformed gets
NBD_REP_ERR_INVALID and the client may try again. A client that breaks the framing itself (bad
magic, unknown client flags) is disconnected by raising ProtocolError.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from vhdtool.nbd import protocol as p
from vhdtool.nbd.channel import Channel
from vhdtool.nbd.export import MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK, Export

MAX_OPTION = 64 << 10
"""Largest option payload read into memory; names are at most 4 KiB by the protocol."""

BASE_ALLOCATION_ID = 1
"""The context id the server gives base:allocation (any non-zero number the server picks)."""


class ProtocolError(Exception):
    """The client broke the protocol so that the connection cannot go on."""


@dataclass
class Session:
    """What negotiation settled for one connection."""

    export: Export
    structured: bool
    contexts: dict[int, str] = field(default_factory=dict)


def find_export(exports: Mapping[str, Export], name: str) -> Export | None:
    """The export called ``name``; the empty name is the default export (the first one)."""
    if name in exports:
        return exports[name]
    if name == "" and exports:
        return next(iter(exports.values()))
    return None


class _Malformed(Exception):
    pass


class _Parser:
    """Reads big-endian fields from an option payload; any overrun raises _Malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def text(self) -> str:
        try:
            return self.take(self.u32()).decode()
        except UnicodeDecodeError:
            raise _Malformed from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _Malformed


class Negotiation:
    """One client's handshake; ``run()`` returns the Session, or None when the client quits."""

    def __init__(self, channel: Channel, exports: Mapping[str, Export]) -> None:
        self.channel = channel
        self.exports = exports
        self.structured = False
        self.contexts: dict[int, str] = {}
        self.contexts_for: str | None = None
        self.no_zeroes = False

    async def run(self) -> Session | None:
        await self.channel.send_all(p.hello(p.HandshakeFlag.FIXED_NEWSTYLE | p.HandshakeFlag.NO_ZEROES))
        (client_flags,) = struct.unpack(">I", await self.channel.read_exact(4))
        if client_flags & ~int(p.ClientFlag.FIXED_NEWSTYLE | p.ClientFlag.NO_ZEROES):  # ~IntFlag drops bits
            raise ProtocolError(f"unknown client flags {client_flags:#x}")
        self.no_zeroes = bool(client_flags & p.ClientFlag.NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(await self.channel.read_exact(16))
            if magic != p.IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                if option == p.Opt.EXPORT_NAME:
                    raise ProtocolError(f"export name of {length} bytes")
                await self.channel.skip(length)
                await self._reply(option, p.Rep.ERR_TOO_BIG, b"option too large")
                continue
            data = bytes(await self.channel.read_exact(length))
            try:
                session = await self._option(option, data)
            except _Malformed:
                await self._reply(option, p.Rep.ERR_INVALID, b"malformed option")
                continue
            if session is not None or option == p.Opt.ABORT:
                return session

    async def _reply(self, option: int, reply: p.Rep, payload: bytes = b"") -> None:
        await self.channel.send_all(p.option_reply(option, reply, payload))

    async def _option(self, option: int, data: bytes) -> Session | None:
        if option == p.Opt.EXPORT_NAME:
            return await self._export_name(data)
        if option in (p.Opt.GO, p.Opt.INFO):
            return await self._go(option, data)
        if option == p.Opt.ABORT:
            await self._reply(option, p.Rep.ACK)
        elif option == p.Opt.LIST:
            _Parser(data).end()
            for name in self.exports:
                await self._reply(option, p.Rep.SERVER, p.server_entry(name))
            await self._reply(option, p.Rep.ACK)
        elif option == p.Opt.STRUCTURED_REPLY:
            _Parser(data).end()
            self.structured = True
            await self._reply(option, p.Rep.ACK)
        elif option in (p.Opt.LIST_META_CONTEXT, p.Opt.SET_META_CONTEXT):
            await self._meta_context(option, data)
        else:  # STARTTLS, EXTENDED_HEADERS and anything newer
            await self._reply(option, p.Rep.ERR_UNSUP, b"option not supported")
        return None

    async def _export_name(self, data: bytes) -> Session:
        try:
            name = data.decode()
        except UnicodeDecodeError:
            raise ProtocolError("export name is not UTF-8") from None
        export = find_export(self.exports, name)
        if export is None:  # this old option has no way to report an error but hanging up
            raise ProtocolError(f"no export named {name!r}")
        tail = b"" if self.no_zeroes else bytes(124)
        await self.channel.send_all(struct.pack(">QH", export.size, export.transmission_flags(self.structured)) + tail)
        return self._session(export)

    async def _go(self, option: int, data: bytes) -> Session | None:
        parser = _Parser(data)
        name = parser.text()
        requests = {parser.u16() for _ in range(parser.u16())}
        parser.end()
        export = find_export(self.exports, name)
        if export is None:
            await self._reply(option, p.Rep.ERR_UNKNOWN, f"no export named {name!r}".encode())
            return None
        flags = export.transmission_flags(self.structured)
        await self._reply(option, p.Rep.INFO, p.info_export(export.size, flags))
        if p.Info.NAME in requests:
            await self._reply(option, p.Rep.INFO, p.info_text(p.Info.NAME, export.name))
        if p.Info.DESCRIPTION in requests and export.description:
            await self._reply(option, p.Rep.INFO, p.info_text(p.Info.DESCRIPTION, export.description))
        await self._reply(option, p.Rep.INFO, p.info_block_size(MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD))
        await self._reply(option, p.Rep.ACK)
        return self._session(export) if option == p.Opt.GO else None

    def _session(self, export: Export) -> Session:
        # Contexts chosen for another export do not carry over (the protocol ties them to a name).
        contexts = self.contexts if self.contexts_for == export.name else {}
        return Session(export, self.structured, contexts)

    async def _meta_context(self, option: int, data: bytes) -> None:
        parser = _Parser(data)
        name = parser.text()
        queries = [parser.text() for _ in range(parser.u32())]
        parser.end()
        if option == p.Opt.SET_META_CONTEXT and not self.structured:
            await self._reply(option, p.Rep.ERR_INVALID, b"structured replies not negotiated")
            return
        export = find_export(self.exports, name)
        if export is None:
            await self._reply(option, p.Rep.ERR_UNKNOWN, f"no export named {name!r}".encode())
            return
        if option == p.Opt.LIST_META_CONTEXT:
            wanted = not queries or any(q in ("base:", p.BASE_ALLOCATION) for q in queries)
        else:
            wanted = p.BASE_ALLOCATION in queries
            self.contexts = {BASE_ALLOCATION_ID: p.BASE_ALLOCATION} if wanted else {}
            self.contexts_for = export.name
        if wanted:
            await self._reply(option, p.Rep.META_CONTEXT, p.meta_context(BASE_ALLOCATION_ID, p.BASE_ALLOCATION))
        await self._reply(option, p.Rep.ACK)
