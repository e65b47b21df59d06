"""Per-chip cloud and nodata fractions, computed from a mask at the mask's own resolution.

A mask (SCL, QA_PIXEL, MODIS QC, or a caller's boolean array) is classified into boolean cloud and
nodata layers, and each chip's fractions are box sums over those layers, taken a chip row at a time
(one pass over the mask, no per-chip loop). The mask is never resampled to the chip grid: a mask pixel belongs to a chip
when its centre falls inside the chip, so a 20 m SCL under a 10 m grid gives exact counts.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from affine import Affine

from stacchip_assets.core.grid import ChipGrid
from stacchip_assets.errors import ResourceLimitError

#: Sentinel-2 L2A scene classes counted as cloud: saturated/defective, cloud shadow, cloud medium
#: and high probability, thin cirrus.
S2_SCL_CLOUD_CLASSES = (1, 3, 8, 9, 10)
S2_SCL_NODATA_CLASS = 0
#: Landsat Collection 2 QA_PIXEL bits: 0 fill; 1 dilated cloud, 3 cloud, 4 cloud shadow.
LANDSAT_FILL_BITS = 1 << 0
LANDSAT_CLOUD_BITS = (1 << 1) | (1 << 3) | (1 << 4)
#: MODIS 09 500 m QC, MODLAND bits 0-1 read as the integer `qc & 0b11`.
MODIS_MODLAND_CLOUD = 2
MODIS_MODLAND_NODATA = 3


#: Valid values of each classification: anything else (256 in a uint16 SCL, a negative QA, NaN) is
#: outside the domain and counted as nodata, never wrapped into a class by a narrowing cast.
SCL_DOMAIN = (0, 11)
QA16_DOMAIN = (0, 65535)
QC32_DOMAIN = (0, 2**32 - 1)  # MOD09A1 sur_refl_qc_500m is a 32-bit field


@dataclass
class OutOfDomain:
    """Running count (and range) of mask values outside a classification's domain."""

    count: int = 0
    low: float = math.inf
    high: float = -math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, values: np.ndarray) -> None:
        """Note these values (bands of a mask are classified on several threads)."""
        if values.size:
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (math.inf, -math.inf)
            with self._lock:
                self.count += int(values.size)
                self.low, self.high = min(self.low, low), max(self.high, high)


def in_domain(values: np.ndarray, domain: tuple[int, int], seen: OutOfDomain | None = None) -> np.ndarray:
    """Booleans: which values are whole numbers within `domain` (inclusive); the others are noted in `seen`."""
    low, high = domain
    kind = values.dtype.kind
    if kind == "u" and np.iinfo(values.dtype).max <= high and low <= 0:
        return np.ones(values.shape, dtype=bool)  # every value of the type is valid
    ok = (values >= low) & (values <= high)
    if kind == "f":
        ok &= np.floor(values) == values  # NaN compares false everywhere
    if seen is not None and not ok.all():
        seen.add(values[~ok])
    return ok


def _narrow(values: np.ndarray, domain: tuple[int, int], dtype: type, fill: int, seen: OutOfDomain | None) -> np.ndarray:
    """`values` as `dtype`, with values outside `domain` replaced by `fill` (a nodata value) first."""
    if values.dtype.kind == "u" and np.iinfo(values.dtype).max <= domain[1]:
        return values.astype(dtype, copy=False)  # the type cannot hold an invalid value: no pass over the data
    if values.dtype.kind in "ui" and values.size and (values.dtype.kind == "u" and domain[0] <= 0
                                                      or values.min() >= domain[0]) and values.max() <= domain[1]:
        return values.astype(dtype, copy=False)  # all valid: two SIMD reductions, ten times faster than a mask
    ok = in_domain(values, domain, seen)
    if ok.all():
        return values.astype(dtype, copy=False)
    return np.where(ok, values, fill).astype(dtype)


def classify_scl(scl: np.ndarray, seen: OutOfDomain | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, nodata) booleans of a Sentinel-2 scene classification layer; values outside 0-11 are nodata."""
    values = _narrow(scl, SCL_DOMAIN, np.uint8, S2_SCL_NODATA_CLASS, seen)
    cloud = (values | np.uint8(2)) == 3  # classes 1 and 3
    cloud |= (values - np.uint8(8)) <= 2  # classes 8, 9, 10 (uint8 wraps below 8)
    return cloud, values == S2_SCL_NODATA_CLASS


def classify_landsat_qa(qa: np.ndarray, seen: OutOfDomain | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, nodata) booleans of a Landsat Collection 2 QA_PIXEL band; values outside uint16 are nodata."""
    qa = _narrow(qa, QA16_DOMAIN, np.uint16, LANDSAT_FILL_BITS, seen)
    return (qa & LANDSAT_CLOUD_BITS) != 0, (qa & LANDSAT_FILL_BITS) != 0


def classify_modis_qc(qc: np.ndarray, seen: OutOfDomain | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, nodata) booleans of a MODIS 09 QC band (MODLAND bits 0-1); values outside uint32 are nodata."""
    modland = _narrow(qc, QC32_DOMAIN, np.int64, MODIS_MODLAND_NODATA, seen) & 0b11
    return modland == MODIS_MODLAND_CLOUD, modland == MODIS_MODLAND_NODATA


def chip_windows_in_mask(
    grid: ChipGrid, mask_transform: Affine, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row0, row1, col0, col1) of each chip in the mask's pixel space (half-open, unclipped).

    Window edges are rounded to the nearest mask pixel edge, which assigns every mask pixel to the
    chips containing its centre. Raises ValueError when the mask grid is rotated relative to the chips.
    """
    to_mask = ~mask_transform @ grid.transform  # chip-grid pixel -> mask pixel
    if abs(to_mask.b) > 1e-9 or abs(to_mask.d) > 1e-9 or to_mask.a <= 0 or to_mask.e <= 0:
        raise ValueError("mask grid is rotated or flipped relative to the chip grid")
    col_off, row_off = grid.pixel_offsets(xs, ys)
    col0 = np.rint(to_mask.a * col_off + to_mask.c).astype(np.int64)
    col1 = np.rint(to_mask.a * (col_off + grid.chip_size) + to_mask.c).astype(np.int64)
    row0 = np.rint(to_mask.e * row_off + to_mask.f).astype(np.int64)
    row1 = np.rint(to_mask.e * (row_off + grid.chip_size) + to_mask.f).astype(np.int64)
    # A mask much coarser than a chip still contributes the pixel under the chip.
    col1 = np.maximum(col1, col0 + 1)
    row1 = np.maximum(row1, row0 + 1)
    return row0, row1, col0, col1


Classifier = Callable[[np.ndarray], "tuple[np.ndarray | None, np.ndarray]"]


class MaskRows(Protocol):
    """A mask read on demand (a raster too large to hold): its shape and a windowed read."""

    shape: tuple[int, int]

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Rows row0:row1, columns col0:col1 (inside the mask) as a 2-D array."""


def mask_fractions(
    grid: ChipGrid,
    mask_transform: Affine,
    mask: np.ndarray | MaskRows,
    classify: Classifier,
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    max_block_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud and nodata fractions in [0, 1] (float32) of each chip.

    `classify` turns a block of raw mask rows into (cloud or None, nodata) booleans. The mask (an
    array, or a :class:`MaskRows` read window by window) is classified and summed one band of rows
    at a time (the rows under one chip row, the columns under its chips), so no full-size layer is
    ever allocated or read: the chip's counts are differences of the band's running column sums.
    Both fractions are over the chip's whole footprint in the mask; the part of a chip outside the
    mask's extent (padded edge chips) counts as nodata. A band above `max_block_pixels` raises
    ResourceLimitError before any band is read. The bands of an in-memory mask are classified on two
    threads, so `classify` must be safe to call concurrently (the built-in ones are).
    """
    row0, row1, col0, col1 = chip_windows_in_mask(grid, mask_transform, xs, ys)
    height, width = mask.shape
    r0, r1 = np.clip(row0, 0, height), np.clip(row1, 0, height)
    c0, c1 = np.clip(col0, 0, width), np.clip(col1, 0, width)
    total = (row1 - row0) * (col1 - col0)
    inside = (r1 - r0) * (c1 - c0)
    cloud_count = np.zeros(len(xs), dtype=np.int64)
    nodata_count = total - inside
    bands, band_of_chip = np.unique(np.stack([r0, r1], axis=1), axis=0, return_inverse=True)
    band_of_chip = band_of_chip.ravel()
    work = []
    for band, (start, stop) in enumerate(bands.tolist()):
        members = np.flatnonzero(band_of_chip == band)
        left, right = int(c0[members].min()), int(c1[members].max())
        if stop <= start or right <= left:
            continue
        if max_block_pixels is not None and (stop - start) * (right - left) > max_block_pixels:
            raise ResourceLimitError(
                f"a band of {stop - start}x{right - left} mask pixels under one chip row is more than "
                f"{max_block_pixels} pixels", limit="STACCHIP_MAX_MASK_PIXELS")
        work.append((members, start, stop, left, right))

    def band_counts(members, start, stop, left, right) -> tuple[np.ndarray | None, np.ndarray]:
        """(cloud, nodata) pixel counts of the chips of one band, from its running column sums."""
        block = mask[start:stop, left:right] if isinstance(mask, np.ndarray) else mask.read(start, stop, left, right)
        cloud, nodata = classify(block)
        column_dtype = np.uint16 if stop - start < 2**16 else np.int64  # narrow sums are twice as fast
        running = np.zeros(right - left + 1, dtype=np.int64)

        def counts(layer: np.ndarray) -> np.ndarray:
            np.cumsum(layer.view(np.uint8).sum(axis=0, dtype=column_dtype), out=running[1:])
            return running[c1[members] - left] - running[c0[members] - left]

        return (None if cloud is None else counts(cloud)), counts(nodata)

    # An in-memory mask is classified on two threads (numpy releases the GIL for whole-band passes);
    # a mask read on demand stays on this thread (its dataset handle is not shared).
    threads = min(2, os.cpu_count() or 1) if isinstance(mask, np.ndarray) and len(work) > 2 else 1
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda w: band_counts(*w), work))
    else:
        results = [band_counts(*w) for w in work]
    for (members, *_), (cloud, nodata) in zip(work, results):
        if cloud is not None:
            cloud_count[members] += cloud
        nodata_count[members] += nodata
    return (cloud_count / total).astype(np.float32), (nodata_count / total).astype(np.float32)
