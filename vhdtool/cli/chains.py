"""Differencing chains: merge, rebase, relink."""

from __future__ import annotations

import click

from vhdtool import render
from vhdtool.cli import options


@click.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--into", type=click.Path(dir_okay=False), help="Merge into this ancestor (default: the parent).")
@click.option("--delete-child", is_flag=True, help="Delete CHILD (and the disks between) after merging.")
@click.option("--force", is_flag=True, help="Merge even if other children of the ancestor are beside it.")
@options.QUIET
@options.JSON
def merge(child: str, into: str | None, delete_child: bool, force: bool, quiet: bool, as_json: bool) -> None:
    """Commit a differencing disk's data into its parent (or a further ancestor).

    Refused when other disks beside the ancestor depend on it, unless --force. In place, ordered
    writes into the ancestor only: CHILD reads the same at every step, so an interrupted merge
    (Ctrl-C stops after the current piece) leaves the chain intact and can be run again.
    """
    from vhdtool.ops.merge import merge as merge_images

    with options.progress("merging", not (quiet or as_json)) as progress:
        done = merge_images(child, into, delete_child=delete_child, force=force, progress=progress)
    if as_json:
        render.print_json(done.as_json())
        return
    for path in done.stale:
        render.warning(f"{path} no longer reads as before (its parent changed); delete it")
    if not quiet:
        render.line(f"merged {', '.join(done.merged)} into {done.into} ({render.human_size(done.data_bytes)} written)")
        for path in done.deleted:
            render.line(f"deleted {path}")


@click.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--parent", "-b", "parent", required=True, type=click.Path(dir_okay=False), help="The new parent.")
@click.option("--unsafe", is_flag=True, help="Only rewrite the parent UUID, time stamp, name and locators.")
@click.option("--children", multiple=True, type=click.Path(file_okay=False), help="Look for children here too.")
@options.QUIET
@options.JSON
def rebase(child: str, parent: str, unsafe: bool, children: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Give CHILD another parent, keeping what it reads (like qemu-img rebase).

    Safe mode copies into CHILD what the old chain shows and the new parent does not; --unsafe
    only relinks (for a moved or renamed parent), and is refused while CHILD has children of
    its own (beside it or in --children folders). In place, ordered writes: CHILD keeps its
    content and its old parent until one final header write switches it, so an interrupted
    rebase (Ctrl-C stops after the current piece) leaves it on the old parent.
    """
    from vhdtool.ops.rebase import rebase as rebase_image

    with options.progress("rebasing", not (quiet or as_json or unsafe)) as progress:
        done = rebase_image(child, parent, unsafe=unsafe, progress=progress, children=list(children))
    if as_json:
        render.print_json(done.as_json())
    elif not quiet:
        copied = "" if unsafe else f" ({render.human_size(done.copied_bytes)} copied into the child)"
        render.line(f"rebased {child} onto {parent}{copied}")


@click.command()
@click.argument("child", type=click.Path(dir_okay=False))
@click.option("--parent", type=click.Path(dir_okay=False), help="The parent file (checked by UUID).")
@click.option(
    "--check-content",
    is_flag=True,
    help="Refuse unless each parent reads as the original the old locators name (a copied chain).",
)
@click.option(
    "--chain",
    "whole_chain",
    is_flag=True,
    help="Relink every disk below CHILD too, not only those whose links are broken (a copied chain).",
)
@options.JSON
def relink(child: str, parent: str | None, check_content: bool, whole_chain: bool, as_json: bool) -> None:
    """Repair the parent locators of a moved, renamed or copied chain.

    CHILD's parent is found through PARENT, the locators, or by UUID among the VHDs in the
    child's folder; CHILD gets a relative and an absolute locator and records its parent's current
    time stamp (a copy's new file times then raise no warning). A disk below CHILD is rewritten
    only when its own locators no longer find its parent, or with --chain. In place: new locator
    data is written past the end, then one header write switches to it, so an interrupted relink
    leaves each disk with its old or its new locators.
    """
    from vhdtool.ops.relink import relink as relink_chain

    done = relink_chain(child, parent, check_content=check_content, whole_chain=whole_chain)
    if as_json:
        render.print_json(done.as_json())
        return
    for c, p in done.links:
        render.line(f"{c} -> {p}")
