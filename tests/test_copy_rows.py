"""``engine.cache.copy_rows``: a beam reorder's row copies done in place, one copy per moved row, must give what
reading every row before writing any gives: chains (a row read and then overwritten), several children of one
parent, swaps and longer cycles, rows grown into new ones, and per-row slot counts."""

from __future__ import annotations

import numpy as np
import pytest

from nmtserve.engine.cache import copy_rows


def _reference(views: list[np.ndarray], moves: dict[int, tuple[int, int]]) -> list[np.ndarray]:
    """Every move read from a snapshot taken before any write."""
    out = [view.copy() for view in views]
    for row, (source, slots) in moves.items():
        for before, after in zip(views, out, strict=True):
            after[row, :, :slots] = before[source, :, :slots]
    return out


def _views(rng: np.random.Generator, rows: int, layers: int = 3) -> list[np.ndarray]:
    return [rng.standard_normal((rows, 2, 12, 4)).astype(np.float32) for _ in range(layers)]


@pytest.mark.parametrize(
    "moves",
    [
        {1: (0, 12), 2: (1, 12), 3: (2, 12)},  # a chain: each row is read before it is overwritten
        {1: (0, 5), 2: (0, 7), 3: (0, 12)},  # one parent, three children
        {0: (1, 12), 1: (0, 12)},  # a swap
        {0: (1, 9), 1: (2, 10), 2: (3, 11), 3: (0, 12)},  # a 4-cycle with different slot counts
        {0: (2, 12), 2: (0, 12), 1: (0, 3), 3: (2, 6)},  # a swap whose rows are also read by others
        {4: (1, 12), 5: (1, 12), 6: (0, 0)},  # rows beyond the old ones (a sentence's first beam step)
    ],
)
def test_copy_rows_equals_reading_everything_first(moves: dict[int, tuple[int, int]]) -> None:
    views = _views(np.random.default_rng(0), 8)
    expected = _reference(views, moves)
    copy_rows(views, moves)
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(30))
def test_copy_rows_on_random_beam_reorders(seed: int) -> None:
    """Random parents per destination (duplicates, permutations, cycles mixed) and random slot counts."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(2, 24))
    views = _views(rng, rows)
    destinations = rng.choice(rows, size=int(rng.integers(1, rows + 1)), replace=False)
    parents = rng.permutation(rows) if seed % 3 == 0 else rng.integers(0, rows, size=rows)
    moves = {int(d): (int(parents[d]), int(rng.integers(0, 13))) for d in destinations if int(parents[d]) != int(d)}
    expected = _reference(views, moves)
    copy_rows(views, moves)
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(got, want)
