"""Run finding over a BAT and over a block bitmap against a plain walk of every entry or bit, on
random tables (property style)."""

from __future__ import annotations

import random
from array import array

import pytest

from vhdtool.format.batruns import allocated_indexes, allocated_runs, bat_runs, count_allocated
from vhdtool.format.sparse import bit_runs
from vhdtool.format.structs import UNALLOCATED

# allocated values whose bytes are mostly 0xFF: a byte-level search must not take them for free entries
AWKWARD = [0, 1, 0xFFFFFFFE, 0x7FFFFFFF, 0xFFFFFF00, 0x00FFFFFF, 0xFF00FFFF, 0xFFFF00FF]


def naive_runs(bat: array, first: int, last: int) -> list[tuple[bool, int, int]]:
    out: list[tuple[bool, int, int]] = []
    for i in range(first, min(last, len(bat))):
        allocated = bat[i] != UNALLOCATED
        if out and out[-1][0] == allocated and out[-1][2] == i:
            out[-1] = (allocated, out[-1][1], i + 1)
        else:
            out.append((allocated, i, i + 1))
    return out


def random_bat(rng: random.Random) -> array:
    bat = array("I")
    target = rng.choice([0, 1, 7, 100, 16383, 16384, 16385, 40000, 100000])
    while len(bat) < target:
        n = rng.choice([1, 2, 3, 500, 16383, 16384, 16385, 33000])
        n = min(n, target - len(bat))
        if rng.random() < 0.5:
            bat.extend([UNALLOCATED] * n)
        else:
            bat.extend(rng.choice([*AWKWARD, rng.randrange(UNALLOCATED)]) for _ in range(min(n, 50)))
    if rng.random() < 0.5:
        bat.byteswap()  # the run finding must not depend on the byte order
    return bat


@pytest.mark.parametrize("seed", range(60))
def test_runs_equal_a_walk_of_every_entry(seed: int) -> None:
    rng = random.Random(seed)
    bat = random_bat(rng)
    n = len(bat)
    bounds = [(0, n), (0, None)] + [tuple(sorted((rng.randint(0, n), rng.randint(0, n)))) for _ in range(5)]
    for first, last in bounds:
        stop = n if last is None else last
        expected = naive_runs(bat, first, stop)
        assert list(bat_runs(bat, first, last)) == expected
        assert list(allocated_runs(bat, first, last)) == [(a, b) for ok, a, b in expected if ok]
        assert list(allocated_indexes(bat, first, last)) == [i for i in range(first, stop) if bat[i] != UNALLOCATED]
    assert count_allocated(bat) == sum(1 for e in bat if e != UNALLOCATED)


def test_a_table_of_2040_gib_with_one_block_at_each_end() -> None:
    bat = array("I", [UNALLOCATED]) * 1_044_480
    bat[0] = bat[-1] = 3
    assert list(bat_runs(bat)) == [(True, 0, 1), (False, 1, 1_044_479), (True, 1_044_479, 1_044_480)]


def test_the_table_can_grow_while_runs_are_being_walked() -> None:
    bat = array("I", [UNALLOCATED, 5, UNALLOCATED])
    runs = bat_runs(bat)
    next(runs)
    bat.extend([UNALLOCATED] * 4)  # no view of the table outlives a step
    assert list(runs) == [(True, 1, 2), (False, 2, 3)]


def naive_bits(bitmap: bytes, start: int, end: int) -> list[tuple[bool, int, int]]:
    out: list[tuple[bool, int, int]] = []
    for sector in range(start, end):
        bit = bool(bitmap[sector // 8] & (0x80 >> (sector % 8)))
        if out and out[-1][0] == bit:
            out[-1] = (bit, out[-1][1], sector + 1)
        else:
            out.append((bit, sector, sector + 1))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_bitmap_runs_equal_a_walk_of_every_bit(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 64, 512])
    bitmap = bytearray()
    while len(bitmap) < size:
        bitmap += bytes([rng.choice([0, 0xFF, rng.randrange(256)])]) * rng.choice([1, 2, 9, 100])
    bitmap = bytes(bitmap[:size])
    for _ in range(8):
        start, end = sorted((rng.randint(0, 8 * size), rng.randint(0, 8 * size)))
        assert list(bit_runs(bitmap, start, end)) == naive_bits(bitmap, start, end)
