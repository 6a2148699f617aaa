"""The transmission phase of one connection: read requests, run them, send replies.

Each request runs as its own task, so one connection can have several reads in flight (the
export serialises writes). Memory stays bounded: the bytes of all requests in flight on a
connection (read lengths, write payloads) are capped by a budget, and replies wait for the socket
to drain, so a client that sends without reading stalls itself, not the server.

A request the protocol lets us refuse (out of range, too large, unknown command, write to a
read-only export) gets an error reply; a client that breaks the framing (bad magic, an oversized
write payload we would have to swallow) is disconnected. Replies of different requests may
interleave, chunks never: each chunk is written in one synchronous step.
"""

from __future__ import annotations

import asyncio
import logging

from vhdtool.errors import ReadOnlyError, VhdError
from vhdtool.nbd import protocol as p
from vhdtool.nbd.deviceio import ReadPiece
from vhdtool.nbd.export import MAX_PAYLOAD
from vhdtool.nbd.negotiation import BASE_ALLOCATION_ID, ProtocolError, Session

log = logging.getLogger("vhdtool.nbd")

INFLIGHT_BYTES = 64 << 20
"""Budget of request bytes in flight per connection: two maximal requests."""

MAX_DESCRIPTORS = 1 << 16
"""Block status descriptors per reply; the client asks again for the rest."""

_WRITING = (p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.TRIM)
_RANGED = (p.Cmd.READ, p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.TRIM, p.Cmd.BLOCK_STATUS)


class _Budget:
    """A counting limit on bytes in flight; one event loop, so no lock is needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        while self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class _Refused(Exception):
    """A request answered with an NBD error number."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Transmission:
    """Serves requests on one negotiated connection until the client disconnects."""

    def __init__(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self.session = session
        self.export = session.export
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self._budget = _Budget(INFLIGHT_BYTES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = False

    async def run(self) -> None:
        """Serve until DISC, end of stream or cancellation; in every case the requests already
        received are answered and written data is flushed before returning."""
        try:
            await self._receive()
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._dirty:
                await self.export.flush()

    async def _receive(self) -> None:
        while True:
            try:
                header = await self.reader.readexactly(p.REQUEST.size)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    log.info("%s: disconnected inside a request header", self.peer)
                return
            magic, flags, cmd, handle, offset, length = p.REQUEST.unpack(header)
            if magic != p.REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            if cmd == p.Cmd.DISC:
                return
            data = b""
            if cmd == p.Cmd.WRITE:
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"write payload of {length} bytes exceeds {MAX_PAYLOAD}")
                cost = await self._budget.acquire(length)
                try:
                    data = await self.reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    self._budget.release(cost)
                    log.info("%s: disconnected inside a write payload", self.peer)
                    return
            else:
                cost = await self._budget.acquire(length if cmd == p.Cmd.READ else 0)
            task = asyncio.create_task(self._serve(flags, cmd, handle, offset, length, data, cost))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, flags: int, cmd: int, handle: int, offset: int, length: int, data: bytes, cost: int) -> None:
        try:
            try:
                self._check(flags, cmd, offset, length)
                await self._dispatch(flags, cmd, handle, offset, length, data)
            except _Refused as e:
                self._send_error(handle, e.errno, str(e))
            except ReadOnlyError as e:
                self._send_error(handle, p.Errno.EPERM, str(e))
            except (VhdError, OSError) as e:
                log.warning("%s: %s", self.peer, e)
                self._send_error(handle, p.Errno.EIO, str(e))
            await self.writer.drain()
        except ConnectionError:
            pass  # the client left; nobody to tell
        except Exception as e:  # a bug in vhdtool must not end the other requests or the server
            log.error("%s: internal error on command %d: %r", self.peer, cmd, e)
            self._send_error(handle, p.Errno.EIO, "internal error")
        finally:
            self._budget.release(cost)

    def _check(self, flags: int, cmd: int, offset: int, length: int) -> None:
        export, session = self.export, self.session
        if cmd not in (p.Cmd.READ, p.Cmd.WRITE, p.Cmd.FLUSH, p.Cmd.TRIM, p.Cmd.WRITE_ZEROES, p.Cmd.BLOCK_STATUS):
            raise _Refused(p.Errno.EINVAL, f"unsupported command {cmd}")
        if cmd in _WRITING and not export.writable:
            raise _Refused(p.Errno.EPERM, "export is read-only")
        if cmd in _RANGED and offset + length > export.size:
            errno = p.Errno.ENOSPC if cmd in _WRITING else p.Errno.EINVAL
            raise _Refused(errno, f"request [{offset}, {offset + length}) beyond the end {export.size}")
        if cmd == p.Cmd.READ and length > MAX_PAYLOAD:
            errno = p.Errno.EOVERFLOW if session.structured else p.Errno.EINVAL
            raise _Refused(errno, f"read of {length} bytes exceeds {MAX_PAYLOAD}")
        if cmd == p.Cmd.TRIM and not export.can_trim:
            raise _Refused(p.Errno.EINVAL, "trim not supported")
        if cmd == p.Cmd.BLOCK_STATUS and (BASE_ALLOCATION_ID not in session.contexts or not length):
            raise _Refused(p.Errno.EINVAL, "no metadata context negotiated" if length else "zero length")

    async def _dispatch(self, flags: int, cmd: int, handle: int, offset: int, length: int, data: bytes) -> None:
        export = self.export
        fua = bool(flags & p.CmdFlag.FUA)
        if cmd == p.Cmd.READ:
            holes = self.session.structured and not flags & p.CmdFlag.DF
            self._send_read(handle, await export.read(offset, length, holes) if length else [])
            return
        if cmd == p.Cmd.BLOCK_STATUS:
            limit = 1 if flags & p.CmdFlag.REQ_ONE else MAX_DESCRIPTORS
            runs = await export.block_status(offset, length, limit)
            self._send(p.block_status_chunk(handle, BASE_ALLOCATION_ID, runs))
            return
        if cmd == p.Cmd.WRITE:
            await export.write(offset, data, fua)
        elif cmd == p.Cmd.WRITE_ZEROES:
            await export.write_zeroes(offset, length, fua)
        elif cmd == p.Cmd.TRIM:
            await export.trim(offset, length, fua)
        elif cmd == p.Cmd.FLUSH:
            await export.flush()
        self._dirty = self._dirty or cmd in _WRITING
        self._send(p.done_chunk(handle) if self.session.structured else p.simple_reply(handle))

    def _send(self, *parts: bytes) -> None:
        if self.writer.transport.is_closing():
            return
        for part in parts:
            self.writer.write(part)

    def _send_read(self, handle: int, pieces: list[ReadPiece]) -> None:
        if not self.session.structured:  # without holes, read_pieces gives one data piece
            self._send(p.simple_reply(handle), *(item for _, item in pieces if isinstance(item, bytes)))
            return
        if not pieces:
            self._send(p.done_chunk(handle))
            return
        last = len(pieces) - 1
        for i, (offset, item) in enumerate(pieces):
            if isinstance(item, int):
                self._send(p.hole_chunk(handle, offset, item, i == last))
            else:
                self._send(p.data_chunk_header(handle, offset, len(item), i == last), item)

    def _send_error(self, handle: int, errno: int, message: str) -> None:
        if self.session.structured:
            self._send(p.error_chunk(handle, errno, message))
        else:
            self._send(p.simple_reply(handle, errno))
