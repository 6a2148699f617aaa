"""The click commands: each parses its options, calls one library function, and renders the result.

Errors: a VhdError leaves through ``main()`` as one line on stderr and its exit code; rendering
(tables, JSON, progress) lives in ``vhdtool.render``.
"""

from __future__ import annotations

import sys

import click

from vhdtool import render
from vhdtool.errors import VhdError
from vhdtool.format import rules


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vhdtool")
def cli() -> None:
    """vhdtool: create, inspect, repair, convert, mount, serve and boot VHD disk images."""


def _size_option(text: str | None) -> int | None:
    return None if text is None else rules.parse_size(text)[1]


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--size", "-s", help="Virtual size: bytes or 512M, 127G, 2T (binary units). Default 127G.")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), help="Default: dynamic.")
@click.option("--block-size", help="Dynamic/differencing block size, a power of two >= 512K. Default 2M.")
@click.option("--parent", type=click.Path(dir_okay=False), help="Make a differencing disk over PARENT.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(
    path: str,
    size: str | None,
    disk_type: str | None,
    block_size: str | None,
    parent: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Create a VHD: a 127 GiB dynamic disk unless told otherwise.

    The file is written beside PATH and renamed into place: an interrupted create leaves nothing.
    """
    from vhdtool.ops.create import create as create_image

    created = create_image(
        path,
        size=_size_option(size),
        type=disk_type,
        parent=parent,
        block_size=_size_option(block_size),
        overwrite=force,
    )
    render.created(created, as_json)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img's key names.")
@click.option("--chain", is_flag=True, help="Describe every image of the differencing chain.")
def info(path: str, as_json: bool, chain: bool) -> None:
    """Show what an image is: type, sizes, creator, geometry, blocks, checksums, parent."""
    from vhdtool.ops.info import image_info

    render.image_info(image_info(path, chain=chain), as_json, chain)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON with qemu-img check's key names.")
def check(path: str, as_json: bool) -> None:
    """Validate footers, header, checksums, BAT, bitmaps and the parent link.

    Exit status: 0 clean, 2 corruption, 3 leaks only, 1 error (like qemu-img check).
    """
    from vhdtool.ops.check import check_image

    report = check_image(path)
    render.check_report(report, as_json)
    sys.exit(report.exit_code)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Listen on this unix socket.")
@click.option("--bind", help="Listen on TCP at this address (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port (default 10809; 0 picks a free one).")
@click.option("--read-only", is_flag=True, help="Refuse writes.")
@click.option("--export-name", default="", help="Export name (default: the empty, default export).")
@click.option("--snapshot", is_flag=True, help="Write to a temporary differencing layer deleted at exit.")
def serve(
    image: str,
    socket_path: str | None,
    bind: str | None,
    port: int | None,
    read_only: bool,
    export_name: str,
    snapshot: bool,
) -> None:
    """Serve IMAGE and its whole differencing chain over NBD until SIGINT/SIGTERM.

    Prints the URI to connect to (nbd+unix:///?socket=... or nbd://host:port/).
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
        on_listening=lambda uri: click.echo(uri),
    )


def main() -> None:
    """Console entry point: VhdError becomes one line and an exit code, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        render.error("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        render.error(e.format_message())
        sys.exit(64 if isinstance(e, click.UsageError) else e.exit_code)
    except VhdError as e:
        render.error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        render.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:
        render.error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
