"""The copy path of convert: pieces read into buffers their threads reuse, and the placing of a
dynamic VHD's blocks in disk order while the pieces are copied on several threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.ops.oputil import make_raw, qemu_compare
from vhdtool.format.blockdev import RawFile
from vhdtool.format.fallocate import allocate
from vhdtool.format.rules import MiB
from vhdtool.ops.convert import convert
from vhdtool.ops.datapath import CHUNK, Turns, in_order, worker_pool
from vhdtool.ops.sources import SourceReader

# distinct bytes in every piece, a piece of written zeros after data (a buffer that still holds
# the data before it must not make it look like data), and a short last piece after full ones
PIECE_BYTES = [0x11, 0x22, 0, 0x33, 0x44]
TAIL = 3 * 4096 + 1234
"""Bytes of the short last piece (not a whole number of sectors either)."""


def pieces_source(path: Path, piece: int, tail: int = 0x55) -> Path:
    """Pieces of PIECE_BYTES, then a short one of ``tail`` bytes (written, even when zeros)."""
    writes = [(i * piece, bytes([b]) * piece) for i, b in enumerate(PIECE_BYTES)]
    writes.append((len(PIECE_BYTES) * piece, bytes([tail]) * TAIL))
    return make_raw(path, len(PIECE_BYTES) * piece + TAIL, writes)


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """The allocated ranges of a file (SEEK_DATA / SEEK_HOLE)."""
    out = []
    with open(path, "rb") as f:
        fd, pos, end = f.fileno(), 0, os.fstat(f.fileno()).st_size
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, pos))
    return out


@pytest.mark.parametrize("tail", [0x55, 0])
def test_reused_buffer_gives_each_piece_only_its_own_bytes(tmp_path: Path, tail: int) -> None:
    """One thread reads every piece into the same buffer: a zero piece after a data piece is
    zero, and the short last piece is exactly its own bytes, none left from the piece before
    (in its zero check too)."""
    src = pieces_source(tmp_path / "src.raw", CHUNK, tail)
    with RawFile(str(src)) as dev:
        reader = SourceReader(dev, CHUNK, write_behind=False)
        assert [p.length for p in reader.pieces] == [CHUNK] * len(PIECE_BYTES) + [TAIL]
        for piece, byte in zip(reader.pieces, [*PIECE_BYTES, tail], strict=True):
            scanned = reader.read(piece)
            assert scanned.zero == (byte == 0)
            assert bytes(reader.data(scanned)) == bytes([byte]) * piece.length


@pytest.mark.parametrize(("source", "output"), [("raw", "raw"), ("raw", "vhd"), ("vhd", "raw")])
def test_pieces_of_distinct_data_and_a_short_tail_copy_exactly(tmp_path: Path, source: str, output: str) -> None:
    """Through convert, on its worker threads (each reads several pieces into its buffer)."""
    piece = CHUNK if (source, output) == ("raw", "raw") else 2 * MiB  # a VHD's pieces: its blocks
    raw = pieces_source(tmp_path / "src.raw", piece)
    src = raw
    if source == "vhd":
        src = tmp_path / "src.vhd"
        convert(raw, src, block_size=piece)
    out = tmp_path / f"out.{output}"
    convert(src, out)
    if output == "vhd":
        assert qemu_compare(raw, "raw", out, "vpc") == 0
        return
    copied = out.read_bytes()  # from a VHD: the size rounded up to a sector, with zeros
    assert copied[: raw.stat().st_size] == raw.read_bytes() and not copied[raw.stat().st_size :].strip(b"\0")
    # the piece of written zeros is a hole in the output; the pieces around it are not
    ranges = data_ranges(out)
    assert ranges[0] == (0, 2 * piece) and ranges[1][0] == 3 * piece


def test_turns_run_in_order_whatever_order_the_steps_arrive() -> None:
    turns = Turns()
    order: list[int] = []

    def step(number: int) -> None:
        time.sleep(0.01 * (4 - number))  # the later steps come to their turn first
        with turns.turn(number):
            order.append(number)

    threads = [threading.Thread(target=step, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert order == [0, 1, 2, 3, 4]


def test_a_step_that_fails_in_its_turn_still_lets_the_next_one_in() -> None:
    turns = Turns()
    order: list[int] = []

    def step(number: int) -> None:
        try:
            with turns.turn(number):
                if number == 1:
                    raise OSError("failed")
                order.append(number)
        except OSError:
            order.append(-number)

    threads = [threading.Thread(target=step, args=(n,)) for n in (2, 1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert order == [0, -1, 2]


def test_the_pool_gives_results_in_order_with_several_jobs_running_at_once() -> None:
    running, most = set(), 0
    lock = threading.Lock()

    def job(n: int) -> int:
        nonlocal most
        with lock:
            running.add(n)
            most = max(most, len(running))
        time.sleep(0.002 * (n % 3))  # later jobs often finish first
        with lock:
            running.discard(n)
        return n * n

    with worker_pool(3) as pool:
        assert list(in_order(pool, job, range(40), window=6)) == [n * n for n in range(40)]
    assert most > 1


def test_a_failed_job_raises_where_its_result_is_taken_and_stops_the_queued_ones() -> None:
    ran: list[int] = []
    started = threading.Event()

    def job(n: int) -> int:
        if n == 0:
            started.wait(10)  # the failure below comes while this job still runs
            time.sleep(0.05)
            ran.append(n)
            return n
        if n == 1:
            started.set()
            raise OSError(5, "Input/output error")
        time.sleep(0.01)  # the queue is still long when the failure is taken
        ran.append(n)
        return n

    results: list[int] = []
    with pytest.raises(OSError, match="Input/output"), worker_pool(2) as pool:
        for value in in_order(pool, job, range(100), window=100):
            results.append(value)
    # every thread has stopped when the block is left: the job that was running finished, and
    # most of the queued ones never ran
    assert results == [0] and 0 in ran
    assert not [t for t in threading.enumerate() if t.name.startswith("vhdtool-copy")]
    assert len(ran) < 50


def test_allocate_reserves_blocks_that_read_as_zeros(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert allocate(fd, MiB, MiB)
        assert os.fstat(fd).st_size == 2 * MiB
        assert os.fstat(fd).st_blocks * 512 >= MiB
        assert os.pread(fd, 2 * MiB, 0) == bytes(2 * MiB)
    finally:
        os.close(fd)


def test_allocate_where_it_cannot_does_nothing() -> None:
    fd = os.open(os.devnull, os.O_WRONLY)  # not a regular file: the kernel answers ENODEV
    try:
        assert not allocate(fd, 0, MiB)
    finally:
        os.close(fd)
