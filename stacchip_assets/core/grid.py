"""The chip grid: which chips a pixel grid yields, where they are, and their WGS84 footprints.

Everything is computed for all chips at once with numpy, pyproj and shapely 2; no per-chip loop.
Chip (x, y) covers pixel rows y*stride ... y*stride+chip_size and columns x*stride ... x*stride+chip_size,
x to the east, y to the south, origin at the top-left corner of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import ceil, floor

import numpy as np
import pyproj
import shapely
from affine import Affine

from stacchip_assets.errors import StacchipError, UnsupportedCRSError

WGS84 = pyproj.CRS.from_user_input("OGC:CRS84")  # lon/lat axis order, as GeoParquet expects


@dataclass(frozen=True)
class ChipGrid:
    """Chips of `chip_size` px every `stride` px over a raster of `shape` (rows, cols).

    Only whole chips are kept unless `pad_edges` is set, in which case the last chip of each row and
    column may extend past the raster (the part outside is nodata when read).
    """

    shape: tuple[int, int]
    transform: Affine
    crs: pyproj.CRS
    chip_size: int = 256
    stride: int | None = None
    pad_edges: bool = False

    def __post_init__(self) -> None:
        if self.chip_size <= 0:
            raise StacchipError(f"chip_size must be positive, got {self.chip_size}")
        if self.stride is not None and self.stride <= 0:
            raise StacchipError(f"stride must be positive, got {self.stride}")

    @property
    def step(self) -> int:
        """Pixels between the origins of neighbouring chips (chip_size unless a stride is set)."""
        return self.stride or self.chip_size

    def _count(self, length: int) -> int:
        if self.pad_edges:
            return 0 if length <= 0 else ceil(max(length - self.chip_size, 0) / self.step) + 1
        return 0 if length < self.chip_size else floor((length - self.chip_size) / self.step) + 1

    @property
    def x_size(self) -> int:
        return self._count(self.shape[1])

    @property
    def y_size(self) -> int:
        return self._count(self.shape[0])

    @property
    def size(self) -> int:
        return self.x_size * self.y_size

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys) of every chip, row by row (y outer, x inner), as uint32 arrays."""
        ys, xs = np.divmod(np.arange(self.size, dtype=np.uint32), max(self.x_size, 1))
        return xs.astype(np.uint32), ys.astype(np.uint32)

    def pixel_offsets(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(col_off, row_off) of the top-left pixel of each chip."""
        return np.asarray(xs, dtype=np.int64) * self.step, np.asarray(ys, dtype=np.int64) * self.step

    def corners(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chip corners in the grid CRS, shape (n, 4): top-left, bottom-left, bottom-right, top-right."""
        col0, row0 = self.pixel_offsets(xs, ys)
        cols = np.stack([col0, col0, col0 + self.chip_size, col0 + self.chip_size], axis=1).astype(np.float64)
        rows = np.stack([row0, row0 + self.chip_size, row0 + self.chip_size, row0], axis=1).astype(np.float64)
        t = self.transform
        return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f

    @cached_property
    def _to_wgs84(self) -> pyproj.Transformer:
        return pyproj.Transformer.from_crs(self.crs, WGS84, always_xy=True)

    def footprints(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """WGS84 footprints of the chips as an array of shapely Polygons (counter-clockwise).

        The four corners are reprojected; a chip whose corners straddle the antimeridian gets its
        western longitudes shifted by +360 so the polygon stays small and valid instead of
        wrapping around the globe.
        """
        cx, cy = self.corners(xs, ys)
        lon, lat = self._to_wgs84.transform(cx.ravel(), cy.ravel())
        lon = np.asarray(lon, dtype=np.float64).reshape(cx.shape)
        lat = np.asarray(lat, dtype=np.float64).reshape(cy.shape)
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            bad = int((~(np.isfinite(lon).all(axis=1) & np.isfinite(lat).all(axis=1))).sum())
            raise UnsupportedCRSError(f"{bad} chip corners cannot be projected to WGS84 from {self.crs.name!r}")
        lon = unwrap_antimeridian(lon)
        polygons = shapely.polygons(np.stack([lon, lat], axis=-1))
        for pole_lat, on_pole in self.pole_chips(cx, cy):
            # A chip that contains (or touches) a pole spans every longitude: its four corners
            # cannot describe it, so it becomes the polar cap band down to its farthest corner.
            if on_pole.any():
                edge = lat[on_pole].max(axis=1) if pole_lat < 0 else lat[on_pole].min(axis=1)
                polygons[on_pole] = shapely.box(-180.0, np.minimum(edge, pole_lat), 180.0, np.maximum(edge, pole_lat))
        return shapely.orient_polygons(polygons, exterior_cw=False)

    def pole_chips(self, cx: np.ndarray, cy: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """For each pole (latitude), which chips (by their corners) contain or touch it."""
        tolerance = 1e-6 * max(abs(self.transform.a), abs(self.transform.e))
        return [
            (
                pole_lat,
                (cx.min(axis=1) - tolerance <= px) & (px <= cx.max(axis=1) + tolerance)
                & (cy.min(axis=1) - tolerance <= py) & (py <= cy.max(axis=1) + tolerance),
            )
            for pole_lat, (px, py) in self._poles
        ]

    @cached_property
    def _poles(self) -> list[tuple[float, tuple[float, float]]]:
        """The poles in the grid CRS (projected CRSs only; in lon/lat a pole is just an edge)."""
        if self.crs.is_geographic:
            return []
        to_grid = pyproj.Transformer.from_crs(WGS84, self.crs, always_xy=True)
        poles = []
        for pole_lat in (90.0, -90.0):
            px, py = to_grid.transform(0.0, pole_lat, errcheck=False)
            if np.isfinite(px) and np.isfinite(py):
                poles.append((pole_lat, (float(px), float(py))))
        return poles

    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the whole raster in the grid CRS."""
        rows, cols = self.shape
        t = self.transform
        xs = [t.c, t.c + t.a * cols + t.b * rows, t.c + t.a * cols, t.c + t.b * rows]
        ys = [t.f, t.f + t.d * cols + t.e * rows, t.f + t.d * cols, t.f + t.e * rows]
        return min(xs), min(ys), max(xs), max(ys)


def unwrap_antimeridian(lon: np.ndarray) -> np.ndarray:
    """Shift western longitudes by +360 in rows (polygons) that span more than 180 degrees."""
    span = lon.max(axis=1) - lon.min(axis=1)
    crossing = span > 180.0
    if crossing.any():
        lon = lon.copy()
        rows = lon[crossing]
        lon[crossing] = np.where(rows < 0, rows + 360.0, rows)
    return lon
