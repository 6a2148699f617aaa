"""The NBD server: listeners, connections, named exports; and a thread to run it from sync code.

One asyncio event loop accepts connections, negotiates and reads requests; each request is
carried out and answered by a worker thread (see ``transmission`` and ``channel``). Each
connection is one task: negotiation under a short deadline (a client that never finishes its
handshake is dropped, as qemu-nbd's --handshake-limit does), then the transmission phase.
Handshakes have a budget of their own, apart from the serving connections: when it is full, a
new connection replaces the oldest unfinished handshake, so idle sockets cannot turn a real
client away. A
client's misbehaviour ends its own connection only; nothing a client sends reaches the loop's
exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

from vhdtool.errors import UsageError, VhdError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.nbd import splice
from vhdtool.nbd.channel import Channel
from vhdtool.nbd.export import Export
from vhdtool.nbd.negotiation import Negotiation, ProtocolError
from vhdtool.nbd.splice import PipePool
from vhdtool.nbd.transmission import ReplyMemory, Transmission

log = logging.getLogger("vhdtool.nbd")

T = TypeVar("T")

DEFAULT_PORT = 10809
BACKLOG = 128
SEND_BUFFER = 4 << 20
REPLY_MEMORY = 256 << 20
"""Request bytes in flight over all connections (each also has its own, smaller budget)."""


class NbdServer:
    """Serves one or more named BlockDevices over NBD.

    Usage (inside an event loop)::

        server = NbdServer()
        server.add_export("", device)            # "" is also what clients get when they ask for no name
        uri = await server.listen_unix("/run/disk.sock")
        ...
        old = await server.switch_write_layer("", new_top)
        await server.close()                     # answers requests in flight, flushes; devices stay open

    The first export added is the default one: a client asking for the empty name gets it. The
    server never closes devices; whoever opened them does, after ``close()``.

    Tuning (the defaults suit every use in vhdtool): ``reply_memory`` caps the bytes of requests in
    flight over all connections (clients that do not read their replies then hold the others
    back instead of growing the server); ``workers`` threads carry out writes and
    reads that wait for the disk; ``pipes`` caps the pipes for zero-copy reads (0 copies with
    pread instead); ``inline_reads`` lets reads the page cache answers run on the event loop.
    """

    def __init__(
        self,
        *,
        workers: int = 8,
        handshake_timeout: float = 5.0,
        max_handshakes: int = 16,
        max_connections: int = 128,
        reply_memory: int = REPLY_MEMORY,
        pipes: int = 256,
        inline_reads: bool = True,
    ) -> None:
        self.workers = workers
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.max_connections = max_connections
        self._memory = ReplyMemory(reply_memory)
        self.inline_reads = inline_reads
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vhdtool-nbd")
        self._pipes = PipePool(pipes) if splice.AVAILABLE and pipes > 0 else None
        self._exports: dict[str, Export] = {}
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._unix_paths: list[str] = []
        self._uris: list[str] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._handshaking: dict[asyncio.Task[Any], None] = {}
        """Connections still negotiating, oldest first."""

    @property
    def reply_memory_used(self) -> int:
        """Request bytes in flight over all connections now (at most ``reply_memory``, or one request)."""
        return self._memory.used

    @property
    def exports(self) -> Mapping[str, Export]:
        return self._exports

    def add_export(self, name: str, device: BlockDevice, *, read_only: bool = False, description: str = "") -> Export:
        """Serve ``device`` as ``name`` (read-only if asked, or if the device is not writable)."""
        if len(name.encode()) > 4096:
            raise UsageError(f"export name of {len(name.encode())} bytes: NBD allows 4096")
        if name in self._exports:
            raise UsageError(f"export {name!r} already exists")
        export = Export(name, device, read_only=read_only, description=description, pipes=self._pipes)
        self._exports[name] = export
        return export

    @property
    def uri(self) -> str:
        """URI of the default export on the first listener."""
        if not self._uris:
            raise UsageError("the NBD server is not listening")
        return self._uris[0]

    def uri_for(self, name: str) -> str:
        """URI of export ``name`` on the first listener."""
        base = self.uri
        scheme, rest = base.split("://", 1)
        authority, _, tail = rest.partition("/")
        query = tail[tail.index("?") :] if "?" in tail else ""
        return f"{scheme}://{authority}/{quote(name, safe='')}{query}"

    async def listen_unix(self, path: str | os.PathLike[str]) -> str:
        """Listen on a unix socket (a stale socket left at ``path`` is replaced); returns the URI."""
        path = os.path.abspath(os.fspath(path))
        _remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(BACKLOG)
        except OSError as e:
            listener.close()
            raise VhdError(f"{path}: cannot listen: {e.strerror or e}") from None
        self._unix_paths.append(path)
        self._accept_on(listener)
        name = next(iter(self._exports), "")
        self._uris.append(f"nbd+unix:///{quote(name, safe='')}?socket={quote(path)}")
        return self._uris[-1]

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
        """Listen on TCP (port 0 picks a free one); returns the URI."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
        except OSError as e:
            raise VhdError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._accept_on(listener)
        port = listener.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        name = next(iter(self._exports), "")
        self._uris.append(f"nbd://{shown}:{port}/{quote(name, safe='')}")
        return self._uris[-1]

    async def switch_write_layer(self, name: str, device: BlockDevice) -> BlockDevice:
        """Atomically make ``device`` the target of later requests to export ``name``.

        Requests in flight finish on the old device, which is then flushed; requests that arrive
        meanwhile wait and go to ``device``. Returns the old device (still open: the caller owns
        it). ``device`` must have the export's size and be writable if the export is.
        """
        export = self._exports.get(name)
        if export is None:
            raise UsageError(f"no export named {name!r}")
        return await export.switch(device)

    async def close(self) -> None:
        """Stop listening, answer the requests already received, flush, drop the connections."""
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        self._accepting.clear()
        self._listeners.clear()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for export in self._exports.values():
            await loop.run_in_executor(self._executor, export.flush)
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()
        self._executor.shutdown(wait=True)
        if self._pipes is not None:
            self._pipes.close()

    def _accept_on(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listeners.append(listener)
        self._accepting.append(asyncio.create_task(self._accept(listener)))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as e:  # out of file descriptors, say: keep serving the connections we have
                log.warning("cannot accept a connection: %s", e.strerror or e)
                await asyncio.sleep(0.5)
                continue
            if len(self._connections) - len(self._handshaking) >= self.max_connections:
                log.warning("refused a connection: %d serving", len(self._connections) - len(self._handshaking))
                sock.close()
                continue
            if len(self._handshaking) >= self.max_handshakes:
                # Idle sockets must not keep real clients out: the newcomer takes the place of the
                # oldest unfinished handshake (a real client finishes its own in milliseconds).
                oldest = next(iter(self._handshaking))
                del self._handshaking[oldest]
                oldest.cancel()
                log.info("dropped the oldest of %d unfinished handshakes", self.max_handshakes)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for a few whole replies: fewer partial sends and wake-ups (the kernel caps it)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            task = asyncio.create_task(self._connection(sock))
            self._connections.add(task)
            self._handshaking[task] = None
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._connections.discard(task)
        self._handshaking.pop(task, None)

    async def _connection(self, sock: socket.socket) -> None:
        channel = Channel(sock)
        peer = channel.peer()
        try:
            async with asyncio.timeout(self.handshake_timeout):
                session = await Negotiation(channel, self._exports).run()
            task = asyncio.current_task()
            if task is not None:
                self._handshaking.pop(task, None)
            if session is not None:
                log.info("%s: serving export %r", peer, session.export.name)
                await Transmission(
                    session, channel, self._executor, self.workers, peer, self.inline_reads, self._memory
                ).run()
        except TimeoutError:
            log.info("%s: handshake not finished in %g s", peer, self.handshake_timeout)
        except ProtocolError as e:
            log.info("%s: protocol error: %s", peer, e)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            log.info("%s: connection lost: %r", peer, e)
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception as e:
            log.error("%s: internal error: %r", peer, e)
        finally:
            channel.close()


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file nobody listens on; refuse to replace anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            raise VhdError(f"{path}: {e.strerror}") from None
        os.unlink(path)
        return
    finally:
        probe.close()
    raise UsageError(f"{path}: another server is listening there")


class ServerThread:
    """Runs an NbdServer on its own event loop in a background thread, for synchronous code.

    Usage::

        with ServerThread(server) as thread:
            uri = thread.start_unix(path)        # returns once the socket accepts connections
            ...
            old = thread.switch_write_layer("", new_top)
        # leaving the block stops the server (requests answered, devices flushed)
    """

    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vhdtool-nbd", daemon=True)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start_unix(self, path: str | os.PathLike[str]) -> str:
        return self._call(self.server.listen_unix(path))

    def start_tcp(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
        return self._call(self.server.listen_tcp(host, port))

    def switch_write_layer(self, name: str, device: BlockDevice) -> BlockDevice:
        """Same as NbdServer.switch_write_layer, from any thread but the server's own."""
        return self._call(self.server.switch_write_layer(name, device))

    def stop(self) -> None:
        """Stop the server and the thread; safe to call twice."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self._call(self.server.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
