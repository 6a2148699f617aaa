"""Progress of an outside tool that reports none (mke2fs -d, debugfs, mcopy, ntfs-3g): the growth
of the file it writes, sampled a few times a second on a thread of its own."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SAMPLE_SECONDS = 0.2


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes a file (or every file under a folder) occupies on disk; 0 when it is not there yet."""
    try:
        if not os.path.isdir(path):
            return os.stat(path).st_blocks * 512
        total = 0
        for folder, _, files in os.walk(path):
            for name in files:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
        return total
    except OSError:
        return 0


@contextmanager
def watched(measure: Callable[[], int], total: int, report: Callable[[int], None] | None) -> Iterator[None]:
    """Call ``report(done)`` with ``measure()`` (capped at ``total``) while the block runs, and
    ``report(total)`` when it ends well."""
    if report is None:
        yield
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            report(min(max(measure(), 0), total))

    watcher = threading.Thread(target=sample, name="vhdtool-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
    report(total)
