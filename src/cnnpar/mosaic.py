"""A mosaic is a rows×cols grid of MNIST *test* digits, held as its index array.

Cell (r, c) is cell number r*cols + c (row-major) and shows test image ``index[r*cols + c]``.
Pixels are never materialised for the whole grid: `batches` gathers them lazily, so a
1000×1000 mosaic costs 8 MB of indices, not a 28,000×28,000 image.
"""

from __future__ import annotations

import os
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
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_cell, source test-image indices (b,) int64) over cells [start, stop), in
        order, `batch_size` cells at a time (the last batch may be smaller)."""
        stop = self.cells if stop is None else stop
        for first in range(start, stop, batch_size):
            yield first, self.index[first : min(first + batch_size, stop)]


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


# --- mask rendering ------------------------------------------------------------------------

MASK_MAX_SIDE = 4096  # the mask PNG is at most this many pixels on its longer side
MASK_ALPHA = 0.6  # overlay opacity at confidence 1.0
_GREEN = np.array([0.0, 1.0, 0.0], dtype=np.float32)
_RED = np.array([1.0, 0.0, 0.0], dtype=np.float32)
_NEUTRAL = np.array([0.5, 0.5, 0.5], dtype=np.float32)  # a cell the run did not classify
_DIGIT = 28


def mask_geometry(rows: int, cols: int, max_side: int = MASK_MAX_SIDE) -> tuple[int, int]:
    """(pixels per cell, cells per pixel) for a mask no longer than `max_side` on either side.

    Cells get 28, 14, 7, 4, 2 or 1 pixels a side (divisors of 28, so downsampling a digit is an
    exact block mean); grids longer than `max_side` cells get one pixel per k×k block of cells.
    """
    longest = max(rows, cols)
    if longest > max_side:
        return 1, -(-longest // max_side)  # ceil
    fit = max_side // longest
    return max(d for d in (28, 14, 7, 4, 2, 1) if d <= fit), 1


def render_mask(
    mosaic: Mosaic,
    images: np.ndarray,
    correct: np.ndarray,
    confidence: np.ndarray,
    max_side: int = MASK_MAX_SIDE,
) -> np.ndarray:
    """The mosaic in grey with a green (correct) / red (wrong) tint of strength `confidence`.

    images: (N, 28, 28) uint8 source digits; correct: (n,) bool and confidence: (n,) in [0, 1]
    for the cells [0, n) a run classified (n ≤ cells, in mosaic order); the cells after them
    are drawn flat neutral grey. Returns an RGB uint8 image of at most `max_side` pixels a side.
    It is built one band of cell rows at a time in float32, so memory stays at a few bands plus
    the output. Raises ValueError for arrays of other shapes.
    """
    n = len(correct)
    if correct.shape != (n,) or confidence.shape != (n,) or n > mosaic.cells:
        raise ValueError(
            f"correct {correct.shape} and confidence {confidence.shape} must be (n,) with the "
            f"same n <= {mosaic.cells}"
        )
    px, per_px = mask_geometry(mosaic.rows, mosaic.cols, max_side)
    # Each cell's tint colour and opacity: (cells, 3) would be 12 B/cell, so computed per band.
    # An unclassified cell is the neutral tint at full opacity.
    shape = (mosaic.rows, mosaic.cols)
    grid_correct = np.zeros(mosaic.cells, dtype=bool)
    grid_correct[:n] = correct
    grid_correct = grid_correct.reshape(shape)
    grid_alpha = np.ones(mosaic.cells, dtype=np.float32)
    grid_alpha[:n] = MASK_ALPHA * confidence.astype(np.float32)
    grid_alpha = grid_alpha.reshape(shape)
    grid_done = np.zeros(mosaic.cells, dtype=bool)
    grid_done[:n] = True
    grid_done = grid_done.reshape(shape)
    grid_index = mosaic.index.reshape(shape)

    def tint_of(r0: int, r1: int) -> np.ndarray:
        """(b, cols, 3) tint of cell rows [r0, r1)."""
        tint = np.where(grid_correct[r0:r1, :, None], _GREEN, _RED)
        return np.where(grid_done[r0:r1, :, None], tint, _NEUTRAL)

    if per_px == 1:
        # Source digits shrunk once to px×px by block means: (N, px, px) float32 in [0, 1].
        f = _DIGIT // px
        small = images.reshape(-1, px, f, px, f).mean(axis=(2, 4), dtype=np.float32) / 255.0
        out = np.empty((mosaic.rows * px, mosaic.cols * px, 3), dtype=np.uint8)
        band = max(1, (1 << 20) // (mosaic.cols * px * px))  # ~1M pixels per band
        for r0 in range(0, mosaic.rows, band):
            r1 = min(r0 + band, mosaic.rows)
            grey = small[grid_index[r0:r1]]  # (b, cols, px, px)
            grey = grey.transpose(0, 2, 1, 3).reshape((r1 - r0) * px, mosaic.cols * px)
            tint = tint_of(r0, r1)  # (b, cols, 3)
            alpha = grid_alpha[r0:r1]
            # Upsample per-cell tint and alpha to pixels: (b*px, cols*px, ...).
            tint = tint.repeat(px, axis=0).repeat(px, axis=1)
            alpha = alpha.repeat(px, axis=0).repeat(px, axis=1)[..., None]
            rgb = (1.0 - alpha) * grey[..., None] + alpha * tint
            out[r0 * px : r1 * px] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out

    # Fewer than one pixel per cell: each pixel is the mean colour of a per_px×per_px block.
    mean_grey = images.reshape(images.shape[0], -1).mean(axis=1, dtype=np.float32) / 255.0
    out_rows, out_cols = -(-mosaic.rows // per_px), -(-mosaic.cols // per_px)
    out = np.empty((out_rows, out_cols, 3), dtype=np.uint8)
    pad_cols = out_cols * per_px - mosaic.cols
    for i, r0 in enumerate(range(0, mosaic.rows, per_px)):
        r1 = min(r0 + per_px, mosaic.rows)
        grey = mean_grey[grid_index[r0:r1]][..., None]  # (b, cols, 1)
        alpha = grid_alpha[r0:r1, :, None]
        tint = tint_of(r0, r1)
        rgb = (1.0 - alpha) * grey + alpha * tint  # (b, cols, 3)
        # Edge blocks are averaged over the cells that exist (NaN padding is ignored).
        rgb = np.pad(rgb, ((0, 0), (0, pad_cols), (0, 0)), constant_values=np.nan)
        rgb = rgb.reshape(r1 - r0, out_cols, per_px, 3)
        out[i] = np.clip(np.nanmean(rgb, axis=(0, 2)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def write_png(target: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG atomically."""
    from PIL import Image

    from cnnpar.io import atomic_path

    with atomic_path(target) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
