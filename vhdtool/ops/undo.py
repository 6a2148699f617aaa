"""The undo disk of an image: one name, used by ``vhdtool mount`` and the file commands' --undo.

An undo disk is a differencing child that takes an image's writes until they are committed
(merged into the image) or discarded (the child deleted). Both kinds of command use the same
file, ``IMAGE.undo.vhd`` beside the image (a mount may put it in another folder), so a mount
picks up what ``cp --undo`` wrote and ``umount --commit`` folds it all into the image; a file
command run with --undo after a mount reads and writes the same pending changes.
"""

from __future__ import annotations

import os

SUFFIX = ".undo.vhd"


def undo_path(image: str, folder: str | None = None) -> str:
    """The undo disk of ``image``: beside it, or in ``folder``."""
    where = os.path.dirname(os.path.abspath(image)) if folder is None else os.path.abspath(folder)
    return os.path.join(where, os.path.basename(image) + SUFFIX)
