"""Serving an image over NBD: serve."""

from __future__ import annotations

import click

from vhdtool import render
from vhdtool.cli import options


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Listen on this unix socket.")
@click.option("--bind", help="Listen on TCP at this address (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port (default 10809; 0 picks a free one).")
@click.option("--read-only", is_flag=True, help="Refuse writes.")
@click.option("--export-name", default="", help="Export name (default: the empty, default export).")
@click.option("--snapshot", is_flag=True, help="Write to a temporary differencing layer deleted at exit.")
@click.option("--socket-mode", type=options.octal_mode, metavar="MODE", help="The socket's mode, e.g. 0660.")
@click.option("--socket-group", metavar="GROUP", help="The socket's group (name or number).")
def serve(
    image: str,
    socket_path: str | None,
    bind: str | None,
    port: int | None,
    read_only: bool,
    export_name: str,
    snapshot: bool,
    socket_mode: int | None,
    socket_group: str | None,
) -> None:
    """Serve IMAGE and its whole differencing chain over NBD until SIGINT/SIGTERM.

    Prints the URI to connect to (nbd+unix:///?socket=... or nbd://host:port/). A writable
    server on a unix socket registers itself, so that `snapshot create --hypervisor libvirt`
    switches the write layer of a libvirt guest whose disk is that socket (a VHD snapshot).
    """
    from vhdtool.nbd.serve import serve_image

    serve_image(
        image,
        socket_path=socket_path,
        bind=bind,
        port=port,
        read_only=read_only,
        export_name=export_name,
        snapshot=snapshot,
        socket_mode=socket_mode,
        socket_group=socket_group,
        on_listening=lambda uri: render.line(uri, flush=True),
    )
