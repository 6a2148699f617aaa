"""One named export: a BlockDevice, what it can do, and the rules for touching it concurrently.

Blocking device calls run in the server's thread pool. Reads run in parallel; writes, zeroing,
trims and flushes of one export are serialised by an asyncio lock (images allow concurrent
pread but only one pwrite at a time). Every request passes a gate, which is what makes
``switch()`` atomic: it closes the gate, waits for the requests in flight on the old device,
flushes it, and lets later requests through to the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from vhdtool.errors import UsageError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.nbd import deviceio
from vhdtool.nbd.protocol import TransmissionFlag as TF

T = TypeVar("T")

MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_PAYLOAD = 32 << 20
"""Largest read or write a client may send (advertised in NBD_INFO_BLOCK_SIZE), as qemu-nbd."""


def device_can(dev: BlockDevice, operation: str) -> bool:
    """Whether ``dev`` implements ``operation`` ("trim", "zero"): a ``can_<op>`` attribute decides
    if the class has one, else the presence of the method. Never decided by trying."""
    flag = getattr(dev, f"can_{operation}", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return callable(getattr(dev, operation, None))


class Export:
    """A BlockDevice served under ``name``. The server never closes devices: their owner does."""

    def __init__(
        self,
        name: str,
        device: BlockDevice,
        executor: Executor,
        *,
        read_only: bool = False,
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self.writable = bool(device.writable) and not read_only
        self.size = device.size
        self.can_trim = self.writable and device_can(device, "trim")
        self._device = device
        self._executor = executor
        self._write_lock = asyncio.Lock()
        self._switch_lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0

    @property
    def device(self) -> BlockDevice:
        """The device later requests go to."""
        return self._device

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

    @asynccontextmanager
    async def _enter(self) -> AsyncIterator[BlockDevice]:
        while not self._open.is_set():
            await self._open.wait()
        self._inflight += 1
        self._idle.clear()
        try:
            yield self._device
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def read(self, offset: int, length: int, holes: bool) -> list[deviceio.ReadPiece]:
        async with self._enter() as dev:
            return await self._run(deviceio.read_pieces, dev, offset, length, holes)

    async def block_status(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        async with self._enter() as dev:
            return await self._run(deviceio.allocation, dev, offset, length, limit)

    async def write(self, offset: int, data: bytes, fua: bool) -> None:
        async with self._enter() as dev, self._write_lock:
            await self._run(dev.pwrite, offset, data)
            if fua:
                await self._run(dev.flush)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        async with self._enter() as dev, self._write_lock:
            await self._run(deviceio.write_zeroes, dev, offset, length)
            if fua:
                await self._run(dev.flush)

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        async with self._enter() as dev, self._write_lock:
            await self._run(dev.trim, offset, length)  # type: ignore[attr-defined]
            if fua:
                await self._run(dev.flush)

    async def flush(self) -> None:
        if not self.writable:
            return
        async with self._enter() as dev, self._write_lock:
            await self._run(dev.flush)

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
        if self.can_trim and not device_can(new_device, "trim"):
            raise UsageError(f"{new_device.path}: export '{self.name}' promised TRIM but the new layer has none")
        async with self._switch_lock:
            self._open.clear()
            try:
                await self._idle.wait()
                old = self._device
                if self.writable:
                    await self._run(old.flush)
                self._device = new_device
            finally:
                self._open.set()
        return old
