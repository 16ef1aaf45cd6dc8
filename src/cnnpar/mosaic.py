"""A mosaic is a rows×cols grid of MNIST *test* digits, held as its index array.

Cell (r, c) is cell number r*cols + c (row-major) and shows test image ``index[r*cols + c]``.
Pixels are never materialised for the whole grid: `batches` gathers them lazily, so a
1000×1000 mosaic costs 8 MB of indices, not a 28,000×28,000 image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnnpar.errors import CnnparError

MAX_CELLS = 10**8
N_TEST = 10_000


class MosaicError(CnnparError):
    """Bad mosaic geometry."""


@dataclass(frozen=True)
class Mosaic:
    rows: int
    cols: int
    seed: int
    index: np.ndarray  # (rows*cols,) int64 source test-image index per cell, row-major
    with_replacement: bool

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def distinct_digits(self) -> int:
        return int(np.unique(self.index).size)

    def cell_index(self, row: int, col: int) -> int:
        return int(self.index[row * self.cols + col])

    def batches(
        self, images: np.ndarray, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_cell, pixels (b, 28, 28) uint8) over cells [start, stop) in order."""
        stop = self.cells if stop is None else stop
        for first in range(start, stop, batch_size):
            yield first, images[self.index[first : min(first + batch_size, stop)]]


def parse_grid(text: str) -> tuple[int, int]:
    """Parse "200x300" (or "200×300") into (rows, cols)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise MosaicError(f"grid {text!r} is not 'ROWSxCOLS', e.g. '200x300'") from None
    check_geometry(rows, cols)
    return rows, cols


def check_geometry(rows: int, cols: int) -> None:
    if rows <= 0 or cols <= 0:
        raise MosaicError(f"mosaic rows and cols must be >= 1 (got {rows}x{cols})")
    if rows * cols > MAX_CELLS:
        raise MosaicError(
            f"mosaic {rows}x{cols} has {rows * cols:,} cells, more than the {MAX_CELLS:,} limit"
        )


def make_mosaic(rows: int, cols: int, seed: int = 0, n_source: int = N_TEST) -> Mosaic:
    """Deterministic mosaic from `seed`: a permutation of the test digits while they last,
    sampling with replacement once the grid has more cells than there are test digits."""
    check_geometry(rows, cols)
    cells = rows * cols
    rng = np.random.default_rng(seed)
    with_replacement = cells > n_source
    if with_replacement:
        index = rng.integers(0, n_source, size=cells, dtype=np.int64)
    else:
        index = rng.permutation(n_source)[:cells].astype(np.int64)
    return Mosaic(rows=rows, cols=cols, seed=seed, index=index, with_replacement=with_replacement)
