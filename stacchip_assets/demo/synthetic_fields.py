"""Deterministic random fields and masks for the synthetic sample rasters (numpy only).

Only + and * on floats (no libm), so the same seeds give the same bits on every machine."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from a stable hash of ``parts`` (never Python's salted ``hash``)."""
    key = "|".join(str(p) for p in parts).encode()
    return np.random.default_rng([zlib.crc32(key), len(key), 20230704])


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field in [0, 1]: random lattice every ``cell`` pixels, smoothstep-interpolated."""
    height, width = shape
    grid = rng.random((int(height // cell) + 3, int(width // cell) + 3))

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n, dtype=np.float64) + 0.5) / cell
        i0 = np.floor(pos).astype(np.intp)
        f = pos - i0
        return i0, f * f * (3.0 - 2.0 * f)

    iy, fy = axis(height)
    ix, fx = axis(width)
    rows = grid[iy] * (1.0 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def _fbm(rng: np.random.Generator, shape: tuple[int, int], cells: Sequence[float]) -> np.ndarray:
    """Sum of value-noise octaves (halving weights), normalised to [0, 1]: blobs of various sizes."""
    total = np.zeros(shape, dtype=np.float64)
    weight_sum = 0.0
    weight = 1.0
    for cell in cells:
        total += weight * _value_noise(rng, shape, cell)
        weight_sum += weight
        weight *= 0.5
    return total / weight_sum


def _fracs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre positions as fractions of the grid: ``u`` (columns, east) and ``v`` (rows, south)."""
    height, width = shape
    v = ((np.arange(height, dtype=np.float64) + 0.5) / height)[:, None]
    u = ((np.arange(width, dtype=np.float64) + 0.5) / width)[None, :]
    return u, v


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy rows, dx columns) without wrap-around."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square, separable, numpy only."""
    rows = mask.copy()
    for d in range(1, radius + 1):
        rows |= _shift(mask, d, 0) | _shift(mask, -d, 0)
    out = rows.copy()
    for d in range(1, radius + 1):
        out |= _shift(rows, 0, d) | _shift(rows, 0, -d)
    return out


def _disk(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """Boolean disk of ``radius`` pixels around pixel (cy, cx)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius


def _above_quantile(field: np.ndarray, fraction: float, where: np.ndarray | None = None) -> np.ndarray:
    """Pixels of ``field`` in its top ``fraction`` (computed over ``where`` if given)."""
    sample = field if where is None else field[where]
    if sample.size == 0 or fraction <= 0:
        return np.zeros(field.shape, dtype=bool)
    return field > np.quantile(sample, 1.0 - fraction)


def _to_dtype(values: np.ndarray, dtype: Any, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and truncate to an integer dtype (deterministic)."""
    return np.clip(values, lo, hi).astype(dtype)
