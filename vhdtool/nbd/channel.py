"""One client connection: a non-blocking socket read by the event loop, written from any thread.

Reads (request headers, option payloads, write payloads) happen on the event loop: small ones
through a buffer, large ones straight into their own bytearray, nothing read before it is
wanted. Replies are sent by whichever thread produced them (a worker, or the event loop for a
read from the page cache): ``send`` hands the buffers of one reply to ``sendmsg`` at once
(header and data separately, nothing joined or copied) and splices the pipes of zero-copy reads
(see ``splice``). If the socket is full, or replies are already waiting, the
reply joins a queue that the event loop writes out when the socket has room, so a worker never
blocks on a slow client and replies never interleave. A reply's ``done`` callback runs once
the kernel has taken it (or the connection is gone), which is what bounds memory per client.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence

from vhdtool.nbd.splice import Spliced

RECV_CHUNK = 256 << 10
"""How much to ask the kernel for when refilling the small-read buffer (headers, options)."""

DIRECT = 64 << 10
"""Reads at least this long bypass the buffer and land in their own bytearray."""

Done = Callable[[], None] | None
Part = bytes | bytearray | memoryview | Spliced
_Item = memoryview | Spliced


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Channel:
    """Exact reads on the event loop; whole-reply sends from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._pos = 0
        self._lock = threading.Lock()  # guards everything below; held while a thread sends
        self._queue: deque[tuple[list[_Item], Done]] = deque()
        self._watching = False  # the loop waits for room to write out the queue
        self._drained: asyncio.Future[None] | None = None
        self.closed = False

    def peer(self) -> str:
        try:
            name = self.sock.getpeername()
        except OSError:
            return "client"
        if isinstance(name, tuple):
            return f"{name[0]}:{name[1]}"
        return "unix client"

    # -- reading (event loop only) -------------------------------------------------------

    def read_buffered(self, n: int) -> bytes | None:
        """``n`` bytes if the buffer holds them already, else None (the fast path: no coroutine)."""
        end = self._pos + n
        if end > len(self._buf):
            return None
        data = bytes(self._buf[self._pos : end])
        if end == len(self._buf):
            self._buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return data

    async def read_exact(self, n: int) -> bytes | bytearray:
        """Exactly ``n`` bytes; IncompleteReadError if the peer closes first."""
        data = self.read_buffered(n)
        if data is not None:
            return data
        if n >= DIRECT:
            return await self._read_direct(n)
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        while len(self._buf) < n:
            chunk = await self.loop.sock_recv(self.sock, RECV_CHUNK)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._buf += chunk
        return await self.read_exact(n)

    async def _read_direct(self, n: int) -> bytearray:
        out = bytearray(n)
        view = memoryview(out)
        got = len(self._buf) - self._pos
        view[:got] = self._buf[self._pos :]
        self._buf.clear()
        self._pos = 0
        while got < n:
            k = await self.loop.sock_recv_into(self.sock, view[got:])
            if not k:
                raise asyncio.IncompleteReadError(bytes(out[:got]), n)
            got += k
        return out

    async def skip(self, n: int) -> None:
        """Read and drop ``n`` bytes, a bounded piece at a time."""
        while n:
            n -= len(await self.read_exact(min(n, DIRECT - 1)))

    # -- writing (any thread) --------------------------------------------------------------

    def send(self, parts: Sequence[Part], done: Done = None) -> None:
        """Send one reply (``parts`` back to back); never blocks, never raises."""
        items = [p if isinstance(p, Spliced) else memoryview(p).cast("B") for p in parts if len(p)]
        with self._lock:
            if not self.closed:
                if not self._queue:
                    items = self._push(items)
                if items and not self.closed:
                    self._queue.append((items, done))
                    if not self._watching:
                        self._watching = True
                        self.loop.call_soon_threadsafe(self._watch)
                    return
        _dropped([(items, done)])

    async def send_all(self, *parts: bytes) -> None:
        """Send and wait until the kernel has taken everything queued (for the handshake)."""
        self.send(parts)
        await self.drained()

    async def drained(self) -> None:
        with self._lock:
            if not self._queue or self.closed:
                return
            if self._drained is None:
                self._drained = self.loop.create_future()
            waiter = self._drained
        await waiter
        if self.closed:
            raise ConnectionResetError("connection lost while sending")

    def _push(self, items: list[_Item]) -> list[_Item]:
        """Send as much as the socket takes; returns what is left (all of it once the peer is
        gone, which ``closed`` then says). Lock held."""
        while items:
            first = items[0]
            try:
                if isinstance(first, Spliced):
                    first.send(self.fd)
                    if first.length:
                        return items
                    items.pop(0)
                    first.release()
                    continue
                buffers = []
                for item in items:
                    if isinstance(item, Spliced):
                        break
                    buffers.append(item)
                sent = self.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                return items
            except OSError:  # the peer is gone: what is left is dropped
                self.closed = True
                return items
            while sent:
                head = items[0]
                assert isinstance(head, memoryview)
                if sent >= len(head):
                    sent -= len(head)
                    items.pop(0)
                else:
                    items[0] = head[sent:]
                    sent = 0
        return items

    def _watch(self) -> None:
        """Event loop: start writing the queue out whenever the socket has room."""
        with self._lock:
            if self.closed or not self._queue:
                self._watching = False
                return
        self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        finished: list[tuple[list[_Item], Done]] = []
        with self._lock:
            while self._queue and not self.closed:
                items, done = self._queue[0]
                rest = self._push(items)
                if rest:
                    self._queue[0] = (rest, done)
                    break
                self._queue.popleft()
                finished.append(([], done))
            if not self._queue or self.closed:
                if self._watching:
                    self._watching = False
                    self.loop.remove_writer(self.fd)
                finished += self._settle_locked()
        _dropped(finished)

    def _settle_locked(self) -> list[tuple[list[_Item], Done]]:
        """Wake a drain waiter; after a close, hand back the dropped replies."""
        if self._drained is not None:
            self.loop.call_soon_threadsafe(_resolve, self._drained)
            self._drained = None
        dropped = list(self._queue)
        self._queue.clear()
        return dropped

    def close(self) -> None:
        """Event loop: drop unsent replies (their callbacks run) and close the socket."""
        with self._lock:
            self.closed = True
            if self._watching:
                self._watching = False
                self.loop.remove_writer(self.fd)
            dropped = self._settle_locked()
        _dropped(dropped)
        self.sock.close()


def _dropped(entries: list[tuple[list[_Item], Done]]) -> None:
    """Replies done with, sent or not: pipes still holding data are closed, callbacks run."""
    for items, done in entries:
        for item in items:
            if isinstance(item, Spliced):
                item.release()
        if done is not None:
            done()
