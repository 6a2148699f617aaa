"""One named export: a BlockDevice, what it can do, and the rules for touching it concurrently.

Requests call the methods here directly from the server's worker threads (and reads from the
page cache from the event loop). Reads run in parallel; writes, zeroing, trims and flushes of
one export are serialised by a lock (images allow concurrent pread but only one pwrite at a
time). Every request passes a gate, which is
what makes ``switch()`` atomic: it closes the gate, waits for the requests already past it
(they finish on the old device), flushes the old device, and opens the gate onto the new one;
requests that arrived meanwhile waited at the gate and go to the new device.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vhdtool.errors import UsageError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.nbd import deviceio, splice
from vhdtool.nbd.protocol import TransmissionFlag as TF
from vhdtool.nbd.splice import PipePool

Framer = Callable[[list[deviceio.ReadPiece]], list[bytes | memoryview | splice.FileRange]]
"""Turns the pieces of a read into the parts of its reply (headers and data sources)."""

MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_PAYLOAD = 32 << 20
"""Largest read or write a client may send (advertised in NBD_INFO_BLOCK_SIZE), as qemu-nbd."""

INLINE_PAUSE = 1.0
"""After a read on the event loop had to wait for the disk (not the page cache), reads go to the
worker threads for this many seconds."""


class Export:
    """A BlockDevice served under ``name``. The server never closes devices: their owner does."""

    def __init__(
        self,
        name: str,
        device: BlockDevice,
        *,
        read_only: bool = False,
        description: str = "",
        pipes: PipePool | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.writable = bool(device.writable) and not read_only
        self.size = device.size
        self.can_trim = self.writable and device.can_trim
        self._device = device
        self._pipes = pipes
        self._write_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._gate = threading.Condition()
        self._open = True
        self._inflight = 0
        self._inline_after = 0.0

    @property
    def device(self) -> BlockDevice:
        """The device later requests go to."""
        return self._device

    @property
    def switching(self) -> bool:
        """True while a switch holds new requests back, waiting for those in flight."""
        return not self._open

    def transmission_flags(self, structured: bool) -> int:
        """Flags for the handshake, from what the export can do (CAN_MULTI_CONN: every connection
        goes through this one device object and FLUSH flushes that device, so a flush on one
        connection covers writes completed on all of them)."""
        flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.CAN_MULTI_CONN
        if structured:
            flags |= TF.SEND_DF
        if not self.writable:
            return flags | TF.READ_ONLY
        flags |= TF.SEND_FUA | TF.SEND_WRITE_ZEROES
        if self.can_trim:
            flags |= TF.SEND_TRIM
        return flags

    @contextmanager
    def _enter(self) -> Iterator[BlockDevice]:
        with self._gate:
            while not self._open:
                self._gate.wait()
            self._inflight += 1
            device = self._device
        try:
            yield device
        finally:
            with self._gate:
                self._inflight -= 1
                if not self._inflight:
                    self._gate.notify_all()

    # -- requests (worker threads) ---------------------------------------------------------

    @property
    def reads_inline(self) -> bool:
        """Whether reads may run on the event loop now: no recent read had to wait for the disk."""
        return time.monotonic() >= self._inline_after

    def note_disk_read(self) -> None:
        """A read on the event loop went to the disk: send reads to the workers for a while."""
        self._inline_after = time.monotonic() + INLINE_PAUSE

    def read(self, offset: int, length: int, holes: bool, frame: Framer, wait: bool = True) -> list[splice.Part] | None:
        """The parts of the reply to a read of [offset, offset + length): ``frame`` wraps the
        pieces in the protocol's headers, then file data is spliced or read, all before the
        request leaves the gate (a switch may close the old device right after). None if ``wait``
        is False and a switch holds requests back (the event loop must not block on the gate)."""
        # _enter() spelled out: this is the hot path, and a generator context manager costs
        with self._gate:
            if not self._open and not wait:
                return None
            while not self._open:
                self._gate.wait()
            self._inflight += 1
            dev = self._device
        try:
            pieces = deviceio.read_pieces(dev, offset, length, holes, self._pipes is not None)
            return splice.pack(frame(pieces), self._pipes)
        finally:
            with self._gate:
                self._inflight -= 1
                if not self._inflight:
                    self._gate.notify_all()

    def block_status(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        with self._enter() as dev:
            return deviceio.allocation(dev, offset, length, limit)

    def write(self, offset: int, data: bytes | bytearray, fua: bool) -> None:
        with self._enter() as dev, self._write_lock:
            dev.pwrite(offset, data)
            if fua:
                dev.flush()

    def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        with self._enter() as dev, self._write_lock:
            dev.zero(offset, length)
            if fua:
                dev.flush()

    def trim(self, offset: int, length: int, fua: bool) -> None:
        with self._enter() as dev, self._write_lock:
            dev.trim(offset, length)
            if fua:
                dev.flush()

    def flush(self) -> None:
        if not self.writable:
            return
        with self._enter() as dev, self._write_lock:
            dev.flush()

    # -- the layer switch --------------------------------------------------------------------

    async def switch(self, new_device: BlockDevice) -> BlockDevice:
        """Make ``new_device`` the target of later requests; returns the old device, flushed.

        Requests already running finish on the old device; requests arriving meanwhile wait and
        then go to the new one. The new device must have the same size and, for a writable
        export, be writable: clients were told both at the handshake.
        """
        if new_device.size != self.size:
            raise UsageError(
                f"{new_device.path}: size {new_device.size} differs from export '{self.name}' ({self.size})"
            )
        if self.writable and not new_device.writable:
            raise UsageError(f"{new_device.path}: export '{self.name}' is writable but the new layer is not")
        if self.can_trim and not new_device.can_trim:
            raise UsageError(f"{new_device.path}: export '{self.name}' promised TRIM but the new layer has none")
        # waiting for requests in flight blocks: do it in a thread of the loop's default pool,
        # not the server's workers (which may be the very requests it waits for)
        return await asyncio.get_running_loop().run_in_executor(None, self._switch, new_device)

    def _switch(self, new_device: BlockDevice) -> BlockDevice:
        with self._switch_lock:
            with self._gate:
                self._open = False
                while self._inflight:
                    self._gate.wait()
            old = self._device
            try:
                if self.writable:
                    old.flush()
                self._device = new_device
            finally:
                with self._gate:
                    self._open = True
                    self._gate.notify_all()
            return old
