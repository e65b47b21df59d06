"""Normalized chip metadata: prechip's formulas, vectorized over a whole index table.

Every value is a ``(sin, cos)`` pair, float32, shape (n, 2):

- ``lon``, ``lat``: centre of the chip's WGS84 footprint bounding box (the index's ``bbox``
  covering column, i.e. ``get_chip_bbox(x, y).bounds``): ``lon = (xmin + xmax) / 2``,
  ``lat = (ymin + ymax) / 2``; ``lat_norm = (sin(lat·π/180), cos(lat·π/180))``, same for lon.
  (A footprint across the antimeridian has longitudes past 180; sin/cos are periodic.)
- ``week_norm = (sin(w·2π/52), cos(w·2π/52))`` with ``w`` the ISO week number (1..53) of the
  chip's UTC datetime (``datetime.isocalendar().week``).
- ``hour_norm = (sin(h·2π/24), cos(h·2π/24))`` with ``h`` the UTC hour (integer 0..23, minutes
  dropped, as prechip's ``date.hour``).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from stacchip_assets.errors import StacchipError

log = logging.getLogger(__name__)

__all__ = ["chip_centres", "chip_norms", "iso_week", "normalize_latlon", "normalize_timestamp", "timestamps_micros",
           "utc_hour"]


def normalize_latlon(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lat_norm, lon_norm), each (n, 2) float32 = (sin, cos) of the angle in radians."""
    lat_r = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lon_r = np.deg2rad(np.asarray(lon, dtype=np.float64))
    lat_norm = np.stack([np.sin(lat_r), np.cos(lat_r)], axis=1).astype(np.float32)
    lon_norm = np.stack([np.sin(lon_r), np.cos(lon_r)], axis=1).astype(np.float32)
    return lat_norm, lon_norm


def iso_week(micros: np.ndarray) -> np.ndarray:
    """ISO 8601 week number (1..53) of UTC timestamps given in microseconds since 1970."""
    days = np.floor_divide(np.asarray(micros, dtype=np.int64), 86_400_000_000)
    weekday = (days + 3) % 7  # Monday = 0; 1970-01-01 was a Thursday
    thursday = (days - weekday + 3).astype("datetime64[D]")  # the ISO year is the Thursday's year
    jan1 = thursday.astype("datetime64[Y]").astype("datetime64[D]")
    return ((thursday - jan1).astype(np.int64) // 7 + 1).astype(np.int64)


def utc_hour(micros: np.ndarray) -> np.ndarray:
    """UTC hour (0..23) of timestamps in microseconds since 1970."""
    return np.floor_divide(np.asarray(micros, dtype=np.int64), 3_600_000_000) % 24


def normalize_timestamp(micros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(week_norm, hour_norm), each (n, 2) float32, from UTC timestamps in microseconds."""
    week = iso_week(micros) * 2 * np.pi / 52
    hour = utc_hour(micros) * 2 * np.pi / 24
    week_norm = np.stack([np.sin(week), np.cos(week)], axis=1).astype(np.float32)
    hour_norm = np.stack([np.sin(hour), np.cos(hour)], axis=1).astype(np.float32)
    return week_norm, hour_norm


def timestamps_micros(table: pa.Table) -> np.ndarray:
    """Each row's UTC time in microseconds since 1970: the ``datetime`` column, else noon of ``date``."""
    if "datetime" in table.column_names:
        col = table.column("datetime")
        if col.null_count == 0:
            return pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    if "date" not in table.column_names:
        raise StacchipError("the index has neither a 'datetime' nor a 'date' column")
    log.warning("the index has no complete 'datetime' column: chip times fall back to noon of 'date'")
    days = pc.cast(table.column("date"), pa.int32()).to_numpy().astype(np.int64)
    return days * 86_400_000_000 + 12 * 3_600_000_000


def chip_centres(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) of the centre of each chip's WGS84 footprint bounding box."""
    if "bbox" in table.column_names:
        bbox = table.column("bbox").combine_chunks() if table.num_rows else None
        if bbox is None:
            return np.empty(0), np.empty(0)
        b = {name: bbox.field(name).to_numpy(zero_copy_only=False) for name in ("xmin", "ymin", "xmax", "ymax")}
    else:
        bounds = shapely.bounds(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))
        b = {"xmin": bounds[:, 0], "ymin": bounds[:, 1], "xmax": bounds[:, 2], "ymax": bounds[:, 3]}
    return b["xmin"] + (b["xmax"] - b["xmin"]) / 2, b["ymin"] + (b["ymax"] - b["ymin"]) / 2


def chip_norms(table: pa.Table, *, legacy_latlon_swap: bool = False) -> dict[str, np.ndarray]:
    """The four normalized metadata arrays of every row of an index (or manifest) table, (n, 2) float32."""
    lon, lat = chip_centres(table)
    lat_norm, lon_norm = normalize_latlon(lon, lat)
    if legacy_latlon_swap:
        lat_norm, lon_norm = lon_norm, lat_norm
    week_norm, hour_norm = normalize_timestamp(timestamps_micros(table))
    return {"lon_norm": lon_norm, "lat_norm": lat_norm, "week_norm": week_norm, "hour_norm": hour_norm}
