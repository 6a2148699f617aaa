"""Model test: random writes and reads over a 3-deep differencing chain against a bytearray."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhdtool
from tests.helpers import digest, need, qemu_raw, run
from vhdtool.format.rules import MiB

SIZE = 9 * MiB + 512  # not a multiple of the block size: the last block is partial
BLOCK = 512 * 1024

op = st.tuples(
    st.sampled_from(["write", "zero", "read"]),
    st.integers(0, SIZE - 1),
    st.sampled_from([1, 7, 511, 512, 513, 4096, 65537, BLOCK, BLOCK + 1000, 3 * BLOCK]),
    st.integers(0, 255),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(st.lists(op, min_size=1, max_size=25), min_size=3, max_size=3))
def test_three_deep_chain_matches_model(layers: list[list[tuple[str, int, int, int]]]) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        model = bytearray(SIZE)
        paths = [folder / "base.vhd", folder / "mid.vhd", folder / "top.vhd"]
        vhdtool.create(paths[0], size=SIZE, block_size=BLOCK)
        sums: dict[Path, str] = {}
        for depth, ops in enumerate(layers):
            if depth:
                vhdtool.create(paths[depth], parent=paths[depth - 1])
                sums[paths[depth - 1]] = digest(paths[depth - 1])
            with vhdtool.open(paths[depth], writable=True) as img:
                for kind, offset, length, value in ops:
                    length = min(length, SIZE - offset)
                    if kind == "read":
                        assert img.pread(offset, length) == model[offset : offset + length]
                        continue
                    data = bytes(length) if kind == "zero" else bytes([value]) * length
                    img.pwrite(offset, data)
                    model[offset : offset + length] = data
                img.flush()
                assert img.pread(0, SIZE) == model
        for path, before in sums.items():
            assert digest(path) == before, f"{path.name} changed while its child was written"
        with vhdtool.open(paths[2]) as img:
            assert img.pread(0, SIZE) == model
            # extents account for every byte, and zero runs really read as zeros
            pos = 0
            for e in img.extents():
                assert e.offset == pos
                if e.zero:
                    assert model[e.offset : e.end] == bytes(e.length)
                pos = e.end
            assert pos == SIZE
        # the base is a plain dynamic disk qemu reads; it must agree with vhdtool
        with vhdtool.open(paths[0]) as base:
            assert qemu_raw(paths[0], folder) == base.pread(0, SIZE)
        assert run(need("vhdiinfo"), paths[2]).returncode == 0
    finally:
        shutil.rmtree(folder)


def test_zero_write_in_child_hides_parent(tmp_path: Path) -> None:
    vhdtool.create(tmp_path / "p.vhd", size=4 * MiB)
    with vhdtool.open(tmp_path / "p.vhd", writable=True) as p:
        p.pwrite(0, b"\xff" * (4 * MiB))
    vhdtool.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd")
    with vhdtool.open(tmp_path / "c.vhd", writable=True) as c:
        c.pwrite(1000, bytes(5000))
        assert c.pread(0, 8192) == b"\xff" * 1000 + bytes(5000) + b"\xff" * 2192
    assert os.path.getsize(tmp_path / "c.vhd") > 2 * MiB  # the zeros allocated a block
