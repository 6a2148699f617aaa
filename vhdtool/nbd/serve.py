"""`vhdtool serve`: export one image chain over NBD until SIGINT or SIGTERM.

With ``snapshot`` a temporary differencing child of the image takes the writes and is deleted at
exit, so the image itself never changes (qemu's -snapshot, done with a VHD layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator

from vhdtool.errors import UsageError
from vhdtool.format.blockdev import BlockDevice
from vhdtool.nbd.server import DEFAULT_PORT, NbdServer


def serve_image(
    image: str,
    *,
    socket_path: str | None = None,
    bind: str | None = None,
    port: int | None = None,
    read_only: bool = False,
    export_name: str = "",
    snapshot: bool = False,
    on_listening: Callable[[str], None] = print,
) -> None:
    """Serve ``image`` (its whole chain) until SIGINT/SIGTERM; then answer the requests in
    flight, flush, close the chain and delete the snapshot layer.

    Listens on ``socket_path`` if given, else TCP ``bind``:``port`` (127.0.0.1:10809 by default).
    ``on_listening`` receives the URI once clients can connect.
    """
    if socket_path is not None and (bind is not None or port is not None):
        raise UsageError("--socket and --bind/--port exclude each other")
    _log_to_stderr()
    with _open_layers(image, read_only, snapshot) as device:
        asyncio.run(_serve(device, socket_path, bind, port, read_only, export_name, on_listening))


@contextlib.contextmanager
def _open_layers(image: str, read_only: bool, snapshot: bool) -> Iterator[BlockDevice]:
    from vhdtool.format.chain import open_image
    from vhdtool.ops.create import create

    workdir = None
    try:
        path = image
        if snapshot:
            workdir = tempfile.mkdtemp(prefix="vhdtool-snapshot-")
            path = os.path.join(workdir, os.path.basename(image) + ".snapshot.vhd")
            create(path, parent=os.path.abspath(image))
        with open_image(path, writable=snapshot or not read_only) as device:
            yield device
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


async def _serve(
    device: BlockDevice,
    socket_path: str | None,
    bind: str | None,
    port: int | None,
    read_only: bool,
    export_name: str,
    on_listening: Callable[[str], None],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = NbdServer()
    server.add_export(export_name, device, read_only=read_only)
    try:
        if socket_path is not None:
            uri = await server.listen_unix(socket_path)
        else:
            uri = await server.listen_tcp(bind or "127.0.0.1", DEFAULT_PORT if port is None else port)
        on_listening(uri)
        await stop.wait()
    finally:
        await server.close()


def _log_to_stderr() -> None:
    """Server warnings (device errors, refused connections) as one line each on stderr."""
    logger = logging.getLogger("vhdtool.nbd")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vhdtool: nbd: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
