"""Zero-copy reads: file pages go into a pipe and from the pipe to the socket, never through Python.

``os.splice`` from the image file into a pipe takes references to page-cache pages; splicing
the pipe into the socket hands those pages on (unix and TCP sockets both accept spliced pages).
Compared with ``pread`` + ``sendmsg`` this saves both copies, and most of the CPU a read costs.

Pipes are pooled and capped: when none is free (or the kernel refuses a large pipe) the caller
reads with ``pread`` instead, so the pool bounds file descriptors, not throughput. A pipe that
still holds data when its reply is dropped is closed, never reused.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence

from vhdtool.errors import IoError

F_SETPIPE_SZ = 1031
PAGE = 4096
PIPE_SIZE = 1 << 20
SLOTS = PIPE_SIZE // PAGE
"""A pipe holds this many buffers: a page of spliced file data or one write each."""
SEGMENT = PIPE_SIZE - 2 * PAGE
"""Longest file range put in one pipe: spans at most SLOTS - 1 pages however it is aligned,
leaving a slot for the chunk header in front of it."""
SMALL = 4096
"""Byte parts up to this size (reply headers) are written into the pipe beside the data."""

AVAILABLE = hasattr(os, "splice")


class Pipe:
    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


class FileRange:
    """``length`` bytes of file ``fd`` from ``offset``: data not read yet (see ``pack``)."""

    __slots__ = ("fd", "length", "offset")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self) -> int:
        return self.length

    def slots(self) -> int:
        """Pipe slots (pages) the range occupies once spliced."""
        return (self.offset % PAGE + self.length + PAGE - 1) // PAGE

    def read(self) -> bytes:
        data = os.pread(self.fd, self.length, self.offset)
        if len(data) != self.length:
            raise IoError(f"file ends at {self.offset + len(data)}, inside the data the image maps there")
        return data


class Spliced:
    """``length`` bytes waiting in ``pipe``, to be spliced to the socket; part of a reply."""

    def __init__(self, pool: PipePool, pipe: Pipe) -> None:
        self.pool = pool
        self.pipe = pipe
        self.length = 0
        self.slots = 0

    def __len__(self) -> int:
        return self.length

    def add_file(self, part: FileRange) -> None:
        done = 0
        while done < part.length:
            n = os.splice(part.fd, self.pipe.w, part.length - done, offset_src=part.offset + done)
            if not n:
                raise IoError(f"file ends at {part.offset + done}, inside the data the image maps there")
            done += n
            self.length += n
        self.slots += part.slots()

    def add_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if os.write(self.pipe.w, data) != len(data):
            raise IoError("pipe refused a reply header")
        self.length += len(data)
        self.slots += 1

    def send(self, sock_fd: int) -> int:
        """Splice what the socket takes now; returns the bytes sent (0 if it is full).
        Raises OSError if the connection is gone."""
        try:
            n = os.splice(self.pipe.r, sock_fd, self.length, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
        except (BlockingIOError, InterruptedError):
            return 0
        self.length -= n
        return n

    def release(self) -> None:
        """Give the pipe back (emptied) or close it (data left in it)."""
        self.pool.give(self.pipe, clean=self.length == 0)


Part = bytes | bytearray | memoryview | Spliced


def pack(parts: Sequence[bytes | bytearray | memoryview | FileRange], pipes: PipePool | None) -> list[Part]:
    """The parts of one reply, file ranges spliced into pipes (with the small parts around them
    written into the same pipe, so a reply usually leaves in one splice) or, without a free
    pipe, read with ``os.pread``. Raises IoError (pipes released) if a file ends early."""
    out: list[Part] = []
    current: Spliced | None = None
    try:
        for i, part in enumerate(parts):
            if isinstance(part, FileRange):
                if current is None or current.slots + part.slots() > SLOTS:
                    current = _new(pipes, out)
                if current is None:
                    out.append(part.read())
                else:
                    current.add_file(part)
                continue
            if current is not None and current.slots >= SLOTS:
                current = None
            following = parts[i + 1] if i + 1 < len(parts) else None
            if current is None and len(part) <= SMALL and isinstance(following, FileRange):
                current = _new(pipes, out)  # a header before data: it goes into the pipe first
            if current is not None and len(part) <= SMALL:
                current.add_bytes(part)
            else:
                current = None
                out.append(part)
    except BaseException:
        for item in out:
            if isinstance(item, Spliced):
                item.release()
        raise
    return out


def _new(pipes: PipePool | None, out: list[Part]) -> Spliced | None:
    pipe = pipes.take() if pipes is not None else None
    if pipe is None:
        return None
    spliced = Spliced(pipes, pipe)  # type: ignore[arg-type]
    out.append(spliced)
    return spliced


class PipePool:
    """At most ``limit`` pipes, created on demand and reused; safe from any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._idle: list[Pipe] = []
        self._count = 0
        self._closed = False

    def take(self) -> Pipe | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._closed or self._count >= self.limit:
                return None
            self._count += 1
        try:
            return Pipe()
        except OSError:  # out of descriptors, or pipe size over the user's limit: read instead
            with self._lock:
                self._count -= 1
            return None

    def give(self, pipe: Pipe, clean: bool) -> None:
        with self._lock:
            if clean and not self._closed:
                self._idle.append(pipe)
                return
            self._count -= 1
        pipe.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for pipe in idle:
            pipe.close()
