"""`vhdtool serve`: export one image chain over NBD until SIGINT or SIGTERM.

With ``snapshot`` a throw-away overlay of the image (``vhdtool.ops.overlay``, in a scratch folder)
takes the writes and is deleted at exit, so the image itself never changes (qemu's -snapshot,
done with a VHD layer).

A writable server on a unix socket registers itself (``vhdtool.nbd.served``) and takes layer
switches there, so that the snapshot coordinator can give a libvirt guest whose disk is this
socket a VHD snapshot, as it gives the runner's guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator

from vhdtool.errors import UsageError, VhdError
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
    socket_mode: int | None = None,
    socket_group: str | None = None,
    on_listening: Callable[[str], None] = print,
) -> None:
    """Serve ``image`` (its whole chain) until SIGINT/SIGTERM; then answer the requests in
    flight, flush, close the chain and delete the snapshot layer.

    Listens on ``socket_path`` if given, else TCP ``bind``:``port`` (127.0.0.1:10809 by default);
    the socket gets ``socket_mode`` and ``socket_group`` when given (QEMUs of other users, such as
    libvirt's, connect to it). ``on_listening`` receives the URI once clients can connect.
    """
    if socket_path is not None and (bind is not None or port is not None):
        raise UsageError("--socket and --bind/--port exclude each other")
    if socket_path is None and (socket_mode is not None or socket_group is not None):
        raise UsageError("--socket-mode and --socket-group need --socket")
    gid = None if socket_group is None else _group_id(socket_group)
    _log_to_stderr()
    access = (socket_mode, gid)
    with _open_layers(image, read_only, snapshot) as device:
        register = socket_path is not None and not read_only and not snapshot
        listen = (socket_path, bind, port)
        asyncio.run(_serve(device, image, listen, read_only, export_name, access, register, on_listening))


def _group_id(group: str) -> int:
    import grp

    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--socket-group {group!r}: no such group") from None


@contextlib.contextmanager
def _open_layers(image: str, read_only: bool, snapshot: bool) -> Iterator[BlockDevice]:
    from vhdtool.format.chain import open_image
    from vhdtool.ops import overlay

    scratch = None
    try:
        path = image
        if snapshot:
            scratch = overlay.make_scratch_folder()
            path = overlay.create_overlay(os.path.abspath(image), overlay.scratch_path(image, scratch))
        with open_image(path, writable=snapshot or not read_only) as device:
            yield device
    finally:
        if scratch is not None:
            overlay.remove_scratch_folder(scratch)


async def _serve(
    device: BlockDevice,
    image: str,
    listen: tuple[str | None, str | None, int | None],
    read_only: bool,
    export_name: str,
    access: tuple[int | None, int | None],
    register: bool,
    on_listening: Callable[[str], None],
) -> None:
    socket_path, bind, port = listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = NbdServer()
    server.add_export(export_name, device, read_only=read_only)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if socket_path is not None:
                uri = await server.listen_unix(socket_path)
                _set_access(socket_path, *access)
                if register:
                    from vhdtool.nbd.served import registered

                    await stack.enter_async_context(registered(server, socket_path, image))
            else:
                uri = await server.listen_tcp(bind or "127.0.0.1", DEFAULT_PORT if port is None else port)
            on_listening(uri)
            await stop.wait()
    finally:
        await server.close()


def _set_access(path: str, mode: int | None, gid: int | None) -> None:
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        if mode is not None:
            os.chmod(path, mode)
    except OSError as e:
        raise VhdError(f"{path}: cannot set the socket's access: {e.strerror or e}") from None


def _log_to_stderr() -> None:
    """Server warnings (device errors, refused connections) as one line each on stderr."""
    logger = logging.getLogger("vhdtool.nbd")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vhdtool: nbd: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
