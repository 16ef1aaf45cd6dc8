"""Mosaic geometry, determinism and the row-major cell mapping."""

from __future__ import annotations

import numpy as np
import pytest

from cnnpar.mosaic import MAX_CELLS, MosaicError, make_mosaic, parse_grid


def test_same_seed_same_mosaic_other_seed_differs() -> None:
    a, b, c = make_mosaic(20, 30, seed=1), make_mosaic(20, 30, seed=1), make_mosaic(20, 30, seed=2)
    np.testing.assert_array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index)


def test_row_major_mapping_and_batches() -> None:
    mosaic = make_mosaic(7, 11, seed=3)
    assert mosaic.cells == 77
    assert mosaic.cell_index(2, 5) == mosaic.index[2 * 11 + 5]
    gathered = np.concatenate([cells for _, cells in mosaic.batches(10)])
    np.testing.assert_array_equal(gathered, mosaic.index)
    firsts = [first for first, _ in mosaic.batches(10)]
    assert firsts == list(range(0, 77, 10))
    # A sub-range yields exactly those cells, in order.
    part = np.concatenate([cells for _, cells in mosaic.batches(4, start=20, stop=31)])
    np.testing.assert_array_equal(part, mosaic.index[20:31])


def test_small_grid_uses_distinct_digits() -> None:
    mosaic = make_mosaic(200, 50, seed=0)
    assert not mosaic.with_replacement
    assert mosaic.distinct_digits == 10_000


def test_large_grid_samples_with_replacement_without_materialising_pixels() -> None:
    mosaic = make_mosaic(1000, 1000, seed=0)
    assert mosaic.with_replacement
    assert mosaic.index.shape == (1_000_000,)
    assert mosaic.index.nbytes == 8_000_000  # the whole mosaic is its index array
    assert mosaic.index.min() >= 0 and mosaic.index.max() < 10_000
    assert 9_900 < mosaic.distinct_digits <= 10_000


@pytest.mark.parametrize(("rows", "cols"), [(0, 5), (5, 0), (-1, 3)])
def test_bad_geometry(rows: int, cols: int) -> None:
    with pytest.raises(MosaicError, match=">= 1"):
        make_mosaic(rows, cols)


def test_absurd_size() -> None:
    with pytest.raises(MosaicError, match="limit"):
        make_mosaic(MAX_CELLS, 2)


def test_parse_grid() -> None:
    assert parse_grid("200x300") == (200, 300)
    assert parse_grid("3×4") == (3, 4)
    with pytest.raises(MosaicError, match="ROWSxCOLS"):
        parse_grid("200by300")
    with pytest.raises(MosaicError, match=">= 1"):
        parse_grid("0x5")
