"""The transmission phase of one connection: read requests, run them, send replies.

The event loop reads request headers and write payloads. Reads the page cache can answer are
carried out right there (a spliced read costs less than handing it to a thread); everything
else runs start to finish in a worker thread, which sends the reply itself (see ``channel``),
so slow reads of one connection proceed in parallel and no reply takes a round trip through
the event loop. One read that had to wait for the disk sends reads to the workers for a while
(``Export.reads_inline``), so a cold image never stalls the loop for long. The export
serialises writes.

Memory stays bounded: the bytes of all requests in flight on a connection (read lengths, write
payloads) are capped by a budget released when a reply has been taken by the kernel, so a
client that sends without reading stalls itself, not the server; and all connections together
draw on one server-wide budget (``ReplyMemory``), so many such clients make the server stop
reading requests (back pressure) instead of growing.

A request the protocol lets us refuse (out of range, too large, unknown command, write to a
read-only export) gets an error reply; a client that breaks the framing (bad magic, an oversized
write payload we would have to swallow) is disconnected. Replies of different requests go out
in the order they are ready; each reply is sent whole.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from vhdtool.errors import ReadOnlyError, VhdError
from vhdtool.nbd import protocol as p
from vhdtool.nbd.channel import Channel
from vhdtool.nbd.deviceio import ReadPiece, Source
from vhdtool.nbd.export import MAX_PAYLOAD
from vhdtool.nbd.negotiation import BASE_ALLOCATION_ID, ProtocolError, Session
from vhdtool.nbd.splice import Part

log = logging.getLogger("vhdtool.nbd")

INFLIGHT_BYTES = 64 << 20
"""Budget of request bytes in flight per connection: two maximal requests."""

INLINE_MAX = 1 << 20
"""Reads up to this size may run on the event loop (a copy of this size takes well under 1 ms)."""

MAX_DESCRIPTORS = 1 << 16
"""Block status descriptors per reply; the client asks again for the rest."""

_WRITING = (p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.TRIM)
_RANGED = (p.Cmd.READ, p.Cmd.WRITE, p.Cmd.WRITE_ZEROES, p.Cmd.TRIM, p.Cmd.BLOCK_STATUS)


class ReplyMemory:
    """The server-wide budget of request bytes in flight, shared by every connection.

    A request that does not fit waits until replies of any connection have been sent. A
    connection with nothing in flight may always start one request, whatever the budget: so
    clients that do not read their replies slow the others down but cannot stop them, and the
    memory held is at most the budget plus one request per connection.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiting: set[_Inflight] = set()

    def take(self, cost: int, always: bool = False) -> bool:
        with self._lock:
            if not always and self.used and self.used + cost > self.limit:
                return False
            self.used += cost
            return True

    def fits(self, cost: int) -> bool:
        with self._lock:
            return not self.used or self.used + cost <= self.limit

    def give(self, cost: int) -> None:
        if not cost:
            return
        with self._lock:
            self.used -= cost
            waiting = list(self._waiting)
        for inflight in waiting:
            inflight.poke()

    def wait_for(self, inflight: _Inflight, waiting: bool) -> None:
        with self._lock:
            if waiting:
                self._waiting.add(inflight)
            else:
                self._waiting.discard(inflight)


class _Inflight:
    """Requests between receipt and reply: counted from any thread, waited for on the loop.

    ``requests`` counts those whose device work is not finished; ``bytes`` the budget held
    until their replies are sent (in this connection's budget and in the server's).
    """

    def __init__(self, limit: int, shared: ReplyMemory | None = None) -> None:
        self.limit = limit
        self.shared = shared
        self.loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self._wake: asyncio.Future[None] | None = None

    async def _until(self, ready: Callable[[], bool]) -> None:
        while True:
            with self._lock:
                if ready():
                    return
                if self._wake is None:
                    self._wake = self.loop.create_future()
                wake = self._wake
            await wake

    def _changed(self) -> None:  # lock held
        wake, self._wake = self._wake, None
        if wake is not None:
            self.loop.call_soon_threadsafe(_resolve, wake)

    def try_admit(self, cost: int) -> bool:
        """Count a request in if its bytes fit the budgets (the fast path: no coroutine)."""
        with self._lock:
            if self.bytes + cost > self.limit:
                return False
            if cost and self.shared is not None and not self.shared.take(cost, always=not self.bytes):
                return False
            self.requests += 1
            self.bytes += cost
            return True

    async def admit(self, cost: int) -> None:
        shared = self.shared
        if shared is not None:
            shared.wait_for(self, True)
        try:
            while not self.try_admit(cost):
                await self._until(
                    lambda: self.bytes + cost <= self.limit
                    and (shared is None or not cost or not self.bytes or shared.fits(cost))
                )
        finally:
            if shared is not None:
                shared.wait_for(self, False)

    def poke(self) -> None:
        """The server-wide budget has room again: look once more."""
        with self._lock:
            self._changed()

    def worked(self) -> None:
        with self._lock:
            self.requests -= 1
            self._changed()

    def replied(self, cost: int) -> None:
        with self._lock:
            self.bytes -= cost
            self._changed()
        if self.shared is not None:
            self.shared.give(cost)

    async def idle(self) -> None:
        await self._until(lambda: not self.requests)


def _blocks_read() -> int:
    """Blocks this thread has read from storage so far (page-cache hits do not count)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_inblock


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_Request = tuple[int, int, int, int, int, bytes | bytearray, int]
"""flags, command, handle, offset, length, write payload, budget cost"""


class _Refused(Exception):
    """A request answered with an NBD error number."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Transmission:
    """Serves requests on one negotiated connection until the client disconnects."""

    def __init__(
        self,
        session: Session,
        channel: Channel,
        workers: Executor,
        slices: int,
        peer: str,
        inline_reads: bool = True,
        memory: ReplyMemory | None = None,
    ) -> None:
        self.session = session
        self.export = session.export
        self.channel = channel
        self.workers = workers
        self.slices = slices
        self.inline_reads = inline_reads
        self.peer = peer
        self._inflight = _Inflight(INFLIGHT_BYTES, memory)
        self._dirty = False

    async def run(self) -> None:
        """Serve until DISC, end of stream or cancellation. The requests already received are
        always carried out and written data flushed; after DISC their replies are sent too."""
        disconnected = False
        try:
            disconnected = await self._receive()
        finally:
            await self._inflight.idle()
            if self._dirty:
                await asyncio.get_running_loop().run_in_executor(self.workers, self.export.flush)
        if disconnected:
            await self.channel.drained()

    async def _receive(self) -> bool:
        """Read and start requests; True after NBD_CMD_DISC, False at the end of the stream.

        Requests already in the read buffer (a client keeping many in flight sends them
        together) are started as one batch split over the workers: one thread hand-off per
        worker instead of one per request. Writes start on their own once their payload is in.
        """
        batch: list[_Request] = []
        try:
            while True:
                header = self.channel.read_buffered(p.REQUEST.size)
                if header is None:
                    batch = self._start(batch)
                    try:
                        header = await self.channel.read_exact(p.REQUEST.size)
                    except asyncio.IncompleteReadError as e:
                        if e.partial:
                            log.info("%s: disconnected inside a request header", self.peer)
                        return False
                magic, flags, cmd, handle, offset, length = p.REQUEST.unpack(header)
                if magic != p.REQUEST_MAGIC:
                    raise ProtocolError(f"bad request magic {magic:#x}")
                if cmd == p.Cmd.DISC:
                    return True
                if cmd == p.Cmd.WRITE and length > MAX_PAYLOAD:
                    raise ProtocolError(f"write payload of {length} bytes exceeds {MAX_PAYLOAD}")
                cost = min(length, MAX_PAYLOAD) if cmd in (p.Cmd.READ, p.Cmd.WRITE) else 0
                if not self._inflight.try_admit(cost):
                    batch = self._start(batch)  # what holds the budget must run to free it
                    await self._inflight.admit(cost)
                if cmd != p.Cmd.WRITE:
                    batch.append((flags, cmd, handle, offset, length, b"", cost))
                    continue
                batch = self._start(batch)
                try:
                    data = await self.channel.read_exact(length)
                except asyncio.IncompleteReadError:
                    self._inflight.worked()
                    self._inflight.replied(cost)
                    log.info("%s: disconnected inside a write payload", self.peer)
                    return False
                self._start([(flags, cmd, handle, offset, length, data, cost)])
        finally:
            self._start(batch)  # admitted requests always run: their budget and count depend on it

    def _start(self, batch: list[_Request]) -> list[_Request]:
        """Start ``batch``: small reads at once on the event loop while the export's reads come
        from the page cache, the rest in up to ``slices`` worker slices. Returns an empty batch."""
        if batch and self.inline_reads and self.export.reads_inline:
            batch = [r for r in batch if not (r[1] == p.Cmd.READ and self._read_inline(r))]
        slices = min(len(batch), self.slices)
        for i in range(slices):
            self.workers.submit(self._serve_all, batch[i::slices])
        return []

    def _read_inline(self, request: _Request) -> bool:
        """Event loop: serve a READ now, sparing it two thread hand-offs (most of a cached read's
        cost). False leaves it to a worker: too large, refused (the worker answers), a switch in
        progress, or an error (the worker retries and reports it)."""
        flags, _, handle, offset, length, _, cost = request
        if not 0 < length <= INLINE_MAX or offset + length > self.export.size:
            return False
        holes = self.session.structured and not flags & p.CmdFlag.DF
        disk_reads = _blocks_read()
        try:
            reply = self.export.read(offset, length, holes, partial(self._read_reply, handle), wait=False)
        except Exception:
            return False
        if reply is None:
            return False
        if _blocks_read() != disk_reads:  # not all from the page cache: the disk is involved
            self.export.note_disk_read()
        self.channel.send(reply, lambda: self._inflight.replied(cost))
        self._inflight.worked()
        return True

    def _serve_all(self, requests: list[_Request]) -> None:
        for request in requests:
            self._serve(*request)

    def _serve(
        self, flags: int, cmd: int, handle: int, offset: int, length: int, data: bytes | bytearray, cost: int
    ) -> None:
        """Worker thread: carry out one request and send its reply."""
        try:
            try:
                self._check(flags, cmd, offset, length)
                reply = self._dispatch(flags, cmd, handle, offset, length, data)
            except _Refused as e:
                reply = self._error(handle, e.errno, str(e))
            except ReadOnlyError as e:
                reply = self._error(handle, p.Errno.EPERM, str(e))
            except (VhdError, OSError) as e:
                log.warning("%s: %s", self.peer, e)
                reply = self._error(handle, p.Errno.EIO, str(e))
            except Exception as e:  # a bug in vhdtool must not end the other requests or the server
                log.error("%s: internal error on command %d: %r", self.peer, cmd, e)
                reply = self._error(handle, p.Errno.EIO, "internal error")
            self.channel.send(reply, lambda: self._inflight.replied(cost))
        finally:
            self._inflight.worked()

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

    def _dispatch(
        self, flags: int, cmd: int, handle: int, offset: int, length: int, data: bytes | bytearray
    ) -> list[Part]:
        """Carry out one checked request; returns the parts of its reply."""
        export = self.export
        fua = bool(flags & p.CmdFlag.FUA)
        if cmd == p.Cmd.READ:
            holes = self.session.structured and not flags & p.CmdFlag.DF
            if not length:
                return self._read_reply(handle, [])
            reply = export.read(offset, length, holes, partial(self._read_reply, handle))
            assert reply is not None  # it waits at the gate
            return reply
        if cmd == p.Cmd.BLOCK_STATUS:
            limit = 1 if flags & p.CmdFlag.REQ_ONE else MAX_DESCRIPTORS
            runs = export.block_status(offset, length, limit)
            return [p.block_status_chunk(handle, BASE_ALLOCATION_ID, runs)]
        if cmd == p.Cmd.WRITE:
            export.write(offset, data, fua)
        elif cmd == p.Cmd.WRITE_ZEROES:
            export.write_zeroes(offset, length, fua)
        elif cmd == p.Cmd.TRIM:
            export.trim(offset, length, fua)
        elif cmd == p.Cmd.FLUSH:
            export.flush()
        if cmd in _WRITING:
            self._dirty = True
        return [p.done_chunk(handle) if self.session.structured else p.simple_reply(handle)]

    def _read_reply(self, handle: int, pieces: list[ReadPiece]) -> list[Source]:
        if not self.session.structured:  # without holes, read_pieces gives one data piece
            return [p.simple_reply(handle), *(part for _, item in pieces if isinstance(item, list) for part in item)]
        if not pieces:
            return [p.done_chunk(handle)]
        parts: list[Source] = []
        last = len(pieces) - 1
        for i, (offset, item) in enumerate(pieces):
            if isinstance(item, int):
                parts.append(p.hole_chunk(handle, offset, item, i == last))
            else:
                parts.append(p.data_chunk_header(handle, offset, sum(map(len, item)), i == last))
                parts += item
        return parts

    def _error(self, handle: int, errno: int, message: str) -> list[Part]:
        if self.session.structured:
            return [p.error_chunk(handle, errno, message)]
        return [p.simple_reply(handle, errno)]
