"""Real NBD clients against the in-process server: every one sees the chain's exact bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

import vhdtool
from tests.helpers import digest, need, run
from tests.nbd.conftest import DATA_PATHS, SIZE, Chain, Serve
from tests.nbd.libnbd import nbd
from vhdtool.format.blockdev import RawFile

MiB = 1 << 20


@pytest.mark.parametrize("options", DATA_PATHS)
def test_qemu_img_reads_the_three_deep_chain(chain: Chain, serve: Serve, tmp_path: Path, options: dict) -> None:
    _, uri = serve(chain.top, read_only=True, **options)
    run(need("qemu-img"), "convert", "-f", "raw", "-O", "raw", uri, tmp_path / "got.raw")
    assert (tmp_path / "got.raw").read_bytes() == chain.expected


def test_nbdcopy_and_nbdinfo_map(chain: Chain, serve: Serve, tmp_path: Path) -> None:
    _, uri = serve(chain.top, read_only=True)
    run(need("nbdcopy"), uri, tmp_path / "got.raw")
    mapped = run(need("nbdinfo"), "--map", uri).stdout
    info = run(need("nbdinfo"), uri).stdout
    assert (tmp_path / "got.raw").read_bytes() == chain.expected
    runs = [line.split() for line in mapped.splitlines()]
    # the chain holds data in [0, 8M) and [30M, 32M) (base), [20M+512, +4096) (mid), [50M+3, +1000) (top)
    holes = [(int(r[0]), int(r[1])) for r in runs if r[2] == "3"]
    data = [(int(r[0]), int(r[1])) for r in runs if r[2] == "0"]
    assert (0, 8 * MiB) in data
    assert sum(n for _, n in holes) + sum(n for _, n in data) == SIZE
    assert any(o <= 40 * MiB and o + n >= 50 * MiB for o, n in holes)
    assert any(o <= 50 * MiB + 3 < o + n for o, n in data)
    assert "is_read_only: true" in info and "can_multi_conn: true" in info
    assert "block_size_maximum: 33554432" in info


@pytest.mark.parametrize("options", DATA_PATHS)
def test_libnbd_structured_read_sends_holes(chain: Chain, serve: Serve, options: dict) -> None:
    _, uri = serve(chain.top, read_only=True, **options)
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    kinds: list[tuple[int, int, int]] = []

    def chunk(subbuf: bytes, offset: int, status: int, error: list[int]) -> int:
        kinds.append((status, offset, len(subbuf)))
        return 0

    buf = h.pread_structured(16 * MiB, 4 * MiB, chunk)
    assert buf == chain.expected[4 * MiB : 20 * MiB]
    assert (nbd.READ_HOLE, 8 * MiB, 12 * MiB) in kinds
    assert {s for s, _, _ in kinds} == {nbd.READ_DATA, nbd.READ_HOLE}
    # with DF the same range comes back as one data chunk
    kinds.clear()
    assert h.pread_structured(16 * MiB, 4 * MiB, chunk, nbd.CMD_FLAG_DF) == buf
    assert kinds == [(nbd.READ_DATA, 4 * MiB, 16 * MiB)]
    seen: list[int] = []

    def extents(meta: str, offset: int, entries: list[int], error: list[int]) -> int:
        seen.extend(entries)
        return 0

    h.block_status(SIZE, 0, extents)
    assert seen[0:2] == [8 * MiB, 0] and seen[2:6] == [12 * MiB + 512, 3, 4096, 0]
    assert sum(seen[0::2]) == SIZE
    seen.clear()
    h.block_status(SIZE, 0, extents, nbd.CMD_FLAG_REQ_ONE)
    assert seen == [8 * MiB, 0]
    h.shutdown()
    plain = nbd.NBD()  # simple replies: holes travel as zeros
    plain.set_request_structured_replies(False)
    plain.connect_uri(uri)
    assert plain.pread(16 * MiB, 4 * MiB) == buf
    assert plain.pread(4 * MiB - 3, SIZE - 4 * MiB - 5) == chain.expected[SIZE - 4 * MiB - 5 : SIZE - 8]
    plain.shutdown()


def test_writes_land_in_the_top_only(chain: Chain, serve: Serve, tmp_path: Path) -> None:
    sums = {p: digest(p) for p in (chain.base, chain.mid)}
    thread, uri = serve(chain.top)
    run(
        need("qemu-io"),
        "-f",
        "raw",
        "-c",
        "write -P 0x99 40M 1M",
        "-c",
        "write -z 0 1M",
        "-c",
        "write -P 0x11 3 5",
        uri,
    )
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.can_zero() and not h.is_read_only() and h.can_fua() and h.can_flush()
    h.pwrite(b"\xab" * 100000, 60 * MiB - 50000, nbd.CMD_FLAG_FUA)
    h.zero(2 * MiB, 30 * MiB - 1000)  # [30M - 1000, 32M - 1000): a hole, base data, top data
    h.flush()
    h.shutdown()
    thread.stop()
    want = bytearray(chain.expected)
    want[40 * MiB : 41 * MiB] = b"\x99" * MiB
    want[0:MiB] = bytes(MiB)
    want[3:8] = b"\x11" * 5
    want[60 * MiB - 50000 : 60 * MiB + 50000] = b"\xab" * 100000
    want[30 * MiB - 1000 : 32 * MiB - 1000] = bytes(2 * MiB)
    with vhdtool.open(chain.top) as image:
        assert image.pread(0, SIZE) == want
        # zeroing a run that already reads as zeros allocated nothing in the top
        allocated = [e for e in image.extents(28 * MiB, 2 * MiB) if not e.zero and e.depth == 0]
        assert allocated == [], allocated
    assert sums == {p: digest(p) for p in (chain.base, chain.mid)}


def test_concurrent_connections_write_and_read(chain: Chain, serve: Serve) -> None:
    """Several libnbd handles with many requests in flight each (aio), as nbdcopy's multi-conn."""
    thread, uri = serve(chain.top)
    handles = []
    for i in range(4):
        h = nbd.NBD()
        h.connect_uri(uri)
        handles.append(h)
        for j in range(16):
            h.aio_pwrite(bytes([i * 16 + j + 1]) * 65536, (i * 16 + j) * MiB + 4096)
    for h in handles:
        while h.aio_in_flight():
            h.poll(-1)
    reads = []
    for i, h in enumerate(handles):
        for j in range(16):
            buf = nbd.Buffer(65536)
            reads.append((i * 16 + j + 1, buf, h.aio_pread(buf, (i * 16 + j) * MiB + 4096)))
    for h in handles:
        while h.aio_in_flight():
            h.poll(-1)
    for value, buf, _ in reads:
        assert buf.to_bytearray() == bytes([value]) * 65536
    handles[0].flush()
    for h in handles:
        h.shutdown()
    thread.stop()
    with vhdtool.open(chain.top) as image:
        for k in range(64):
            assert image.pread(k * MiB + 4096, 65536) == bytes([k + 1]) * 65536


def test_fixed_parent_and_raw_file(serve: Serve, tmp_path: Path) -> None:
    """The other layouts data is found in: a fixed VHD under a differencing child, a raw file."""
    base, child, raw = tmp_path / "fixed.vhd", tmp_path / "child.vhd", tmp_path / "disk.raw"
    vhdtool.create(base, size=8 * MiB, type="fixed")
    with vhdtool.open(base, writable=True) as image:
        image.pwrite(0, bytes(range(256)) * (8 * MiB // 256))
    vhdtool.create(child, parent=base)
    with vhdtool.open(child, writable=True) as image:
        image.pwrite(MiB + 100, b"child" * 50000)
        want = image.pread(0, 8 * MiB)
    raw.write_bytes(want)
    assert want[MiB + 100 : MiB + 105] == b"child" and want[:4] == bytes(range(4))
    for target in (child, raw):
        _, uri = serve(target if target.suffix == ".vhd" else RawFile(raw), read_only=True)
        run(need("nbdcopy"), uri, tmp_path / "got.raw")
        assert (tmp_path / "got.raw").read_bytes() == want
