"""Training shards from a chip index: selection, whole-item extraction, npz / Zarr shards, manifest.

Pure library (no Dagster). The Dagster layer wires these functions into assets::

    from stacchip_assets.training import TrainingSetConfig, select_chips, write_training_set

    config = TrainingSetConfig(bands={"sentinel-2-l2a": ["blue", "green", "red", "nir"]},
                               max_cloud=0.2, sample_size=10_000, seed=42)
    selection = select_chips(combined_index, config)          # filters + seeded sampling
    manifest = write_training_set(selection, config, "out/")  # shards + manifest.parquet
    manifest = write_training_set(selection, config, "out/", client=dask_client)  # same bytes

What it improves on stacchip's ``prechip``
------------------------------------------
- Sampling is **without replacement** (prechip drew ``randint`` rows, so chips repeated);
  ``allow_duplicates=True`` restores sampling with replacement.
- Chips are grouped by item: the item JSON is loaded once per item (per task), each asset is opened
  once (one :class:`~stacchip_assets.index.chipper.Chipper` per item), and chips are read in grid order,
  a band of chip rows per call, so each COG block is decoded once (prechip reloaded the item and
  reopened every file for every chip, and decoded each 512 px block four times for 256 px chips).
- Each chip keeps its acquisition hour (the index's ``datetime`` column); prechip read the ``date``
  column and forced noon.
- The last, partial shard is written (prechip dropped incomplete cubes).
- ``lat_norm`` holds latitude and ``lon_norm`` longitude. prechip swapped them
  (``lon_norm, lat_norm = normalize_latlon(bounds)`` while the function returns ``(lat, lon)``);
  ``legacy_latlon_swap=True`` reproduces that for models trained on prechip cubes.

Normalized metadata (prechip's formulas, every value a ``(sin, cos)`` pair, float32)
------------------------------------------------------------------------------------
- ``lon``, ``lat``: centre of the chip's WGS84 footprint bounding box (the index's ``bbox``
  covering column, i.e. ``get_chip_bbox(x, y).bounds``): ``lon = (xmin + xmax) / 2``,
  ``lat = (ymin + ymax) / 2``; ``lat_norm = (sin(lat·π/180), cos(lat·π/180))``, same for lon.
  (A footprint across the antimeridian has longitudes past 180; sin/cos are periodic.)
- ``week_norm = (sin(w·2π/52), cos(w·2π/52))`` with ``w`` the ISO week number (1..53) of the
  chip's UTC datetime (``datetime.isocalendar().week``).
- ``hour_norm = (sin(h·2π/24), cos(h·2π/24))`` with ``h`` the UTC hour (integer 0..23, minutes
  dropped, as prechip's ``date.hour``).

Output layout (``out_dir``)
---------------------------
::

    manifest.parquet            one row per sample: chipid, collection, item_id, shard, position,
                                index, path, chip_index_x/y, chip_size, chip_stride, datetime, item_href
    training_set.json           config, per-collection channel layout (asset, band, dtype, nodata),
                                counts, shard files, formulas
    {collection}/shard_000000.npz       format "npz": prechip's keys, one file per shard
    {collection}.zarr/                  format "zarr": one Zarr v3 group per collection

``npz`` shards hold ``pixels`` float32 (n, C, H, W) and ``lon_norm``, ``lat_norm``, ``week_norm``,
``hour_norm`` float32 (n, 2), written with a fixed zip timestamp so equal content gives equal bytes.
The ``zarr`` group holds the same five arrays over the whole collection (N samples); ``pixels`` uses
the sharding codec with one inner chunk per chip (random access reads one chip) and one shard file
per ``shard_size`` chips, Blosc-zstd with byte shuffle.

Every sample traces back to its chip: manifest row ``i`` of a collection is sample ``index`` of that
collection, stored in shard ``shard`` at ``position``. The whole folder is written in a hidden
sibling and renamed into place, and every shard file is itself written to a temporary name and
renamed, so readers never see a partial training set or a partial shard.

Distribution
------------
The plan (which chip goes to which shard and position) is decided on the driver before anything
runs. Work is split into tasks of whole consecutive shards of one collection (about
``chips_per_task`` chips, so one item or a group of items); each task opens its own datasets and
writes its shards under their final, deterministic names. With a ``distributed.Client`` the tasks
run on Dask workers, without one they run in this process: the files are byte-identical either way.
Workers must see ``out_dir`` (a local folder on a ``LocalCluster``, a shared file system otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shutil
import uuid
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from stacchip_assets.index.chipper import Chipper
from stacchip_assets.errors import StacchipError
from stacchip_assets.core.hrefs import HrefPolicy, default_read_policy
from stacchip_assets.index.chip_indexer import NoStatsChipIndexer
from stacchip_assets.core.ids import validate_id
from stacchip_assets.index.reader import load_item  # the stored item JSON (local, http(s) or s3://), shared with read_chip

log = logging.getLogger(__name__)

__all__ = [
    "NORM_KEYS", "ChannelSpec", "CollectionLayout", "TrainingSetConfig", "chip_norms", "collection_layouts",
    "dask_client", "iter_item_chips", "load_item", "load_shard", "normalize_latlon", "normalize_timestamp",
    "plan_training_set", "read_manifest", "read_training_set_info", "select_chips", "training_order",
    "write_training_set",
]

#: Layout version of the training-set folder (training_set.json "format_version").
FORMAT_VERSION = 1
#: Keys of the normalized metadata, in prechip's npz order (after "pixels").
NORM_KEYS = ("lon_norm", "lat_norm", "week_norm", "hour_norm")
MANIFEST_NAME = "manifest.parquet"
INFO_NAME = "training_set.json"
#: Columns an index table needs for selection and extraction.
REQUIRED_COLUMNS = ("chipid", "collection", "item_id", "chip_index_x", "chip_index_y", "item_href", "chip_size")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


# =================================================================================================
# Configuration
# =================================================================================================
def _to_bound(value: Any, *, end: bool) -> tuple[int | None, str | None]:
    """A date range bound as UTC microseconds (inclusive), plus its ISO text for the config dict.

    A date (or a date-only string) covers its whole day: the start is 00:00 of that day, the end
    the last microsecond of that day. A naive datetime is taken as UTC.
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"cannot parse the date bound {text!r}: {exc}") from None
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        when = when.astimezone(dt.timezone.utc)
        micros = (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        return int(micros), when.isoformat()
    if isinstance(value, dt.date):
        day = (value - dt.date(1970, 1, 1)).days + (1 if end else 0)
        micros = day * 86_400_000_000 - (1 if end else 0)
        return int(micros), value.isoformat()
    raise TypeError(f"a date bound must be a date, datetime or ISO string, not {type(value).__name__}")


@dataclass(frozen=True)
class TrainingSetConfig:
    """What goes into a training set, and how it is written.

    - ``bands``: collection id -> asset keys, in channel order. A multi-band asset (NAIP ``image``)
      contributes all of its bands, in order. Every selected collection needs an entry.
    - ``collections``: collections to take chips from (default: the keys of ``bands``).
    - ``max_cloud`` / ``max_nodata``: keep chips whose ``cloud_cover_percentage`` /
      ``nodata_percentage`` (fractions in [0, 1]) are at most this.
    - ``start`` / ``end``: inclusive bounds on the chip's ``datetime``; a date (or ``"YYYY-MM-DD"``)
      covers its whole UTC day, a datetime is exact (naive = UTC).
    - ``bbox``: (west, south, east, north) in degrees; keeps chips whose footprint bounding box
      intersects it. ``west > east`` means a box across the antimeridian.
    - ``chip_size``: keep only chips of this size (an index may mix sizes; a collection's shards
      need one size).
    - ``sample_size``: number of chips drawn, over all selected collections (int), or per
      collection (mapping); ``None`` takes every chip. Without ``allow_duplicates`` a chip is drawn
      at most once and asking for more chips than exist returns all of them (with a warning).
    - ``shard_size``: samples per shard (prechip's cube size, 128).
    - ``seed``: the sample and the order of items in the shards are a function of it and of the
      index content (not of the index's row order).
    - ``format``: ``"npz"`` (prechip's cubes) or ``"zarr"`` (one Zarr v3 group per collection).
    - ``compress_level``: deflate level of the npz members (0 = stored, as ``np.savez``; 1..9) and
      zstd level of the Zarr chunks.
    - ``legacy_latlon_swap``: write latitude under ``lon_norm`` and longitude under ``lat_norm``, as
      prechip did by mistake.
    """

    bands: Mapping[str, Sequence[str]]
    collections: Sequence[str] | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None
    start: dt.date | dt.datetime | str | None = None
    end: dt.date | dt.datetime | str | None = None
    bbox: Sequence[float] | None = None
    chip_size: int | None = None
    sample_size: int | Mapping[str, int] | None = None
    shard_size: int = 128
    seed: int = 42
    format: Literal["npz", "zarr"] = "npz"
    allow_duplicates: bool = False
    compress_level: int = 1
    legacy_latlon_swap: bool = False

    def __post_init__(self) -> None:
        bands = {str(c): tuple(str(b) for b in keys) for c, keys in dict(self.bands).items()}
        object.__setattr__(self, "bands", bands)
        collections = tuple(bands) if self.collections is None else tuple(str(c) for c in self.collections)
        object.__setattr__(self, "collections", collections)
        for collection in collections:
            validate_id(collection, "collection")
            if not bands.get(collection):
                raise ValueError(f"no bands configured for collection {collection!r} (bands has {sorted(bands)})")
            dupes = sorted({b for b in bands[collection] if bands[collection].count(b) > 1})
            if dupes:
                raise ValueError(f"collection {collection!r} lists the assets {dupes} more than once")
        for name in ("max_cloud", "max_nodata"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1], got {value}")
        if self.bbox is not None:
            bbox = tuple(float(v) for v in self.bbox)
            if len(bbox) != 4 or bbox[1] > bbox[3]:
                raise ValueError(f"bbox must be (west, south, east, north), got {self.bbox}")
            object.__setattr__(self, "bbox", bbox)
        start, _ = _to_bound(self.start, end=False)
        end, _ = _to_bound(self.end, end=True)
        if start is not None and end is not None and start > end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if isinstance(self.sample_size, Mapping):
            sizes = {str(c): int(n) for c, n in self.sample_size.items()}
            if any(n < 0 for n in sizes.values()):
                raise ValueError(f"sample sizes must be >= 0, got {sizes}")
            unknown = sorted(set(sizes) - set(collections))
            if unknown:
                raise ValueError(f"sample_size names collections that are not selected: {unknown}")
            object.__setattr__(self, "sample_size", sizes)
        elif self.sample_size is not None and int(self.sample_size) < 0:
            raise ValueError(f"sample_size must be >= 0, got {self.sample_size}")
        if int(self.shard_size) <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.format not in ("npz", "zarr"):
            raise ValueError(f"format must be 'npz' or 'zarr', got {self.format!r}")
        if not 0 <= int(self.compress_level) <= 9:
            raise ValueError(f"compress_level must be in 0..9, got {self.compress_level}")

    def __hash__(self) -> int:  # the dict fields are normalized, so the JSON form identifies a config
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def start_micros(self) -> int | None:
        return _to_bound(self.start, end=False)[0]

    @property
    def end_micros(self) -> int | None:
        return _to_bound(self.end, end=True)[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (dates as ISO text); ``TrainingSetConfig.from_dict`` reads it back."""
        out = dataclasses.asdict(self)
        out["bands"] = {c: list(b) for c, b in self.bands.items()}
        out["collections"] = list(self.collections or ())
        out["start"] = _to_bound(self.start, end=False)[1]
        out["end"] = _to_bound(self.end, end=True)[1]
        out["bbox"] = None if self.bbox is None else list(self.bbox)
        out["sample_size"] = dict(self.sample_size) if isinstance(self.sample_size, Mapping) else self.sample_size
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingSetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training-set settings {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


# =================================================================================================
# Normalized metadata (prechip's formulas, vectorized)
# =================================================================================================
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


def _timestamps_micros(table: pa.Table) -> np.ndarray:
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
    week_norm, hour_norm = normalize_timestamp(_timestamps_micros(table))
    return {"lon_norm": lon_norm, "lat_norm": lat_norm, "week_norm": week_norm, "hour_norm": hour_norm}


# =================================================================================================
# Selection
# =================================================================================================
def _as_table(index: Any) -> pa.Table:
    if isinstance(index, pa.Table):
        return index
    if isinstance(index, pa.RecordBatch):
        return pa.Table.from_batches([index])
    if hasattr(index, "to_table"):  # pyarrow.dataset.Dataset
        return index.to_table()
    raise TypeError(f"expected a pyarrow Table or Dataset, got {type(index).__name__}")


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=object)


def _bbox_mask(table: pa.Table, bbox: tuple[float, float, float, float]) -> pa.ChunkedArray | np.ndarray:
    west, south, east, north = bbox
    b = table.column("bbox").combine_chunks()
    xmin, ymin = b.field("xmin").to_numpy(zero_copy_only=False), b.field("ymin").to_numpy(zero_copy_only=False)
    xmax, ymax = b.field("xmax").to_numpy(zero_copy_only=False), b.field("ymax").to_numpy(zero_copy_only=False)
    lat_ok = (ymax >= south) & (ymin <= north)
    ranges = [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]
    lon_ok = np.zeros(len(xmin), dtype=bool)
    for lo, hi in ranges:
        for shift in (0.0, -360.0, 360.0):  # footprints across the antimeridian go past 180
            lon_ok |= (xmax + shift >= lo) & (xmin + shift <= hi)
    return lat_ok & lon_ok


def _canonical(table: pa.Table) -> pa.Table:
    """Rows sorted by content, so the result does not depend on the order rows were combined in."""
    keys = [("collection", "ascending"), ("chipid", "ascending")]
    for extra in ("item_href", "datetime"):
        if extra in table.column_names:
            keys.append((extra, "ascending"))
    return table.take(pc.sort_indices(table, sort_keys=keys))


def _item_rank(collections: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random rank of each row's (collection, item): items interleave across shards."""
    keys = np.array([f"{c}\x00{i}" for c, i in zip(collections, items)], dtype=object)
    if len(keys) == 0:
        return np.empty(0, dtype=np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    perm = np.random.default_rng([int(seed), 0x17E4]).permutation(len(unique))
    rank = np.empty(len(unique), dtype=np.int64)
    rank[perm] = np.arange(len(unique))
    return rank[inverse.ravel()]


def training_order(table: pa.Table, seed: int = 42) -> pa.Table:
    """Rows in the order they are written: by collection, then items in a seeded random order, then
    each item's chips in grid order (row by row), which is the order that decodes each block once."""
    if table.num_rows == 0:
        return table
    collections = _strings(table, "collection")
    rank = _item_rank(collections, _strings(table, "item_id"), seed)
    _, coll_code = np.unique(collections, return_inverse=True)
    xs = table.column("chip_index_x").to_numpy().astype(np.int64)
    ys = table.column("chip_index_y").to_numpy().astype(np.int64)
    order = np.lexsort((xs, ys, rank, coll_code.ravel()))  # last key is the primary one; stable
    return table.take(pa.array(order))


def select_chips(index_table: Any, config: TrainingSetConfig) -> pa.Table:
    """The chips of an index that go into a training set, in training order.

    Filters (collections, cloud, nodata, dates, bbox, chip size), drops repeated (collection,
    chipid) rows, then draws ``sample_size`` chips with a seeded generator: without replacement
    unless ``allow_duplicates``. Deterministic: the same index content and config give the same
    rows in the same order, whatever the row order of ``index_table``.
    """
    table = _as_table(index_table)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise StacchipError(f"the index lacks the columns {missing}")
    mask = pc.is_in(table.column("collection"), value_set=pa.array(list(config.collections), pa.string()))
    if config.max_cloud is not None:
        mask = pc.and_(mask, pc.less_equal(table.column("cloud_cover_percentage"), float(config.max_cloud)))
    if config.max_nodata is not None:
        mask = pc.and_(mask, pc.less_equal(table.column("nodata_percentage"), float(config.max_nodata)))
    if config.chip_size is not None:
        mask = pc.and_(mask, pc.equal(table.column("chip_size"), int(config.chip_size)))
    start, end = config.start_micros, config.end_micros
    if start is not None or end is not None:
        micros = pa.chunked_array([pa.array(_timestamps_micros(table), pa.int64())])
        if start is not None:
            mask = pc.and_(mask, pc.greater_equal(micros, start))
        if end is not None:
            mask = pc.and_(mask, pc.less_equal(micros, end))
    if config.bbox is not None:
        mask = pc.and_(mask, pa.array(_bbox_mask(table, config.bbox)))
    table = _canonical(table.filter(pc.fill_null(mask, False)))

    # Repeated rows (the same chip combined twice) are dropped; sampling decides about repeats.
    if table.num_rows > 1:
        coll, chipid = _strings(table, "collection"), _strings(table, "chipid")
        repeat = np.zeros(table.num_rows, dtype=bool)
        repeat[1:] = (coll[1:] == coll[:-1]) & (chipid[1:] == chipid[:-1])
        if repeat.any():
            log.warning("dropping %d repeated (collection, chipid) rows from the index", int(repeat.sum()))
            table = table.filter(pa.array(~repeat))

    if config.sample_size is not None and table.num_rows:
        table = table.take(pa.array(_sample(table, config), pa.int64()))
    return training_order(table, config.seed)


def _draw(n: int, size: int, rng: np.random.Generator, replace: bool, what: str) -> np.ndarray:
    if not replace and size > n:
        log.warning("%s: asked for %d chips without duplicates, only %d match: taking all", what, size, n)
        size = n
    if n == 0 or size == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=replace))


def _sample(table: pa.Table, config: TrainingSetConfig) -> np.ndarray:
    replace = bool(config.allow_duplicates)
    if not isinstance(config.sample_size, Mapping):
        rng = np.random.default_rng(int(config.seed))
        return _draw(table.num_rows, int(config.sample_size), rng, replace, "sample")
    coll = _strings(table, "collection")
    picked = []
    for collection in sorted(set(coll.tolist())):
        rows = np.flatnonzero(coll == collection)
        size = config.sample_size.get(collection)
        if size is None:
            picked.append(rows)
            continue
        rng = np.random.default_rng([int(config.seed), zlib.crc32(collection.encode())])
        picked.append(rows[_draw(len(rows), size, rng, replace, collection)])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


# =================================================================================================
# Items, layouts and whole-item extraction
# =================================================================================================
def _indexer(item, chip_size: int, stride: int, href_policy: HrefPolicy | None = None) -> NoStatsChipIndexer:
    # pad_edges only adds partial chips at the right/bottom edges: every indexed position keeps its
    # offsets, and positions indexed with padding stay inside the grid. The stored item JSON is
    # untrusted: its hrefs pass `href_policy` (default: hrefs.default_read_policy()) before GDAL sees them.
    return NoStatsChipIndexer(item, chip_size=int(chip_size), stride=None if stride == chip_size else int(stride), pad_edges=True,
                              href_policy=href_policy if href_policy is not None else default_read_policy())


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of a training sample: band ``band`` (1-based) of asset ``asset``."""

    asset: str
    band: int
    name: str
    dtype: str
    nodata: float | None


@dataclass(frozen=True)
class CollectionLayout:
    """The channels of one collection's samples and its chip geometry."""

    collection: str
    channels: tuple[ChannelSpec, ...]
    chip_size: int
    chip_stride: int

    @property
    def assets(self) -> list[str]:
        return list(dict.fromkeys(c.asset for c in self.channels))

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def asset_channels(self) -> list[tuple[str, int, int]]:
        """(asset, first channel, channel count) per asset, in channel order."""
        out, start = [], 0
        for asset in self.assets:
            n = sum(1 for c in self.channels if c.asset == asset)
            out.append((asset, start, n))
            start += n
        return out

    def nodata_values(self) -> np.ndarray:
        """Per-channel nodata value as float32 (NaN when the asset declares none)."""
        return np.array([np.nan if c.nodata is None else c.nodata for c in self.channels], dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "chip_size": self.chip_size,
            "chip_stride": self.chip_stride,
            "channels": [dataclasses.asdict(c) for c in self.channels],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CollectionLayout":
        return cls(
            collection=d["collection"], chip_size=int(d["chip_size"]), chip_stride=int(d["chip_stride"]),
            channels=tuple(ChannelSpec(**c) for c in d["channels"]),
        )


def _band_names(item, key: str, count: int) -> list[str]:
    if count == 1:
        return [key]
    fields = item.assets[key].extra_fields
    for list_key in ("eo:bands", "bands"):
        bands = fields.get(list_key)
        if isinstance(bands, list) and len(bands) == count:
            names = [str(b.get("common_name") or b.get("name") or "") for b in bands]
            if all(names) and len(set(names)) == count:
                return names
    return [f"{key}_{i + 1}" for i in range(count)]


def layout_from_chipper(collection: str, chipper: Chipper, assets: Sequence[str]) -> CollectionLayout:
    """The channel layout an open Chipper yields for these assets (opens their datasets)."""
    channels: list[ChannelSpec] = []
    for key in assets:
        ds = chipper.reader(key).dataset
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            raise StacchipError(f"bands of mixed data types {sorted(dtypes)}", item_id=chipper.indexer.item.id, asset_key=key)
        for band, name in enumerate(_band_names(chipper.indexer.item, key, ds.count), start=1):
            channels.append(ChannelSpec(asset=key, band=band, name=name, dtype=ds.dtypes[0],
                                        nodata=None if ds.nodata is None else float(ds.nodata)))
    names = [c.name for c in channels]
    if len(set(names)) != len(names):  # e.g. two multi-band assets with the same band names
        channels = [dataclasses.replace(c, name=f"{c.asset}:{c.name}") if names.count(c.name) > 1 else c for c in channels]
    return CollectionLayout(collection=collection, channels=tuple(channels),
                            chip_size=chipper.indexer.chip_size, chip_stride=chipper.indexer.grid.step)


def _check_layout(layout: CollectionLayout, chipper: Chipper) -> None:
    """Every item of a collection must yield the same channels as the first one."""
    for asset, _, count in layout.asset_channels():
        ds = chipper.reader(asset).dataset
        want = next(c.dtype for c in layout.channels if c.asset == asset)
        if ds.count != count or ds.dtypes[0] != want:
            raise StacchipError(
                f"has {ds.count} band(s) of {ds.dtypes[0]}; the first item of {layout.collection!r} has "
                f"{count} of {want} (all items of a collection must give the same channels)",
                item_id=chipper.indexer.item.id, asset_key=asset,
            )


def _uniform(table: pa.Table, name: str, collection: str) -> int:
    values = np.unique(table.column(name).to_numpy())
    if len(values) != 1:
        raise StacchipError(f"collection {collection!r} mixes {name} values {values.tolist()}: "
                            f"set TrainingSetConfig.chip_size or select one grid")
    return int(values[0])


def collection_layouts(plan: pa.Table, config: TrainingSetConfig, *, mountpath: str | None = None,
                       href_policy: HrefPolicy | None = None) -> dict[str, CollectionLayout]:
    """Channel layout of every collection in a plan, read from its first item's assets."""
    layouts: dict[str, CollectionLayout] = {}
    for collection in dict.fromkeys(_strings(plan, "collection").tolist()):
        rows = plan.filter(pc.equal(plan.column("collection"), collection))
        chip_size = _uniform(rows, "chip_size", collection)
        stride = _uniform(rows, "chip_stride", collection) if "chip_stride" in rows.column_names else chip_size
        href = rows.column("item_href")[0].as_py()
        if not href:
            raise StacchipError(f"chip {rows.column('chipid')[0].as_py()!r} has no item_href")
        with Chipper(_indexer(load_item(href), chip_size, stride, href_policy), mountpath=mountpath,
                     assets=list(config.bands[collection])) as chipper:
            layouts[collection] = layout_from_chipper(collection, chipper, config.bands[collection])
    return layouts


def _rows_per_batch(chipper: Chipper, assets: Sequence[str]) -> int:
    """Chip rows per read so that one call covers a whole block row of every asset (max 8)."""
    step = chipper.indexer.grid.step
    tallest = step
    for key in assets:
        reader = chipper.reader(key)
        block_rows = reader.dataset.block_shapes[0][0]
        tallest = max(tallest, int(math.ceil(block_rows / reader.scale_y)))  # block height in grid px
    return int(min(8, max(1, math.ceil(tallest / step))))


def iter_item_chips(
    chipper: Chipper,
    xs: Sequence[int] | np.ndarray,
    ys: Sequence[int] | np.ndarray,
    *,
    rows_per_batch: int | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Pixels of many chips of one item, read in grid order a band of chip rows at a time.

    Yields ``(positions, {asset: array (k, bands, chip, chip)})`` for the Chipper's assets, where
    ``positions`` index into ``xs``/``ys``. Each call covers whole block rows of every asset (chip
    rows are grouped by the tallest block, in grid pixels), so a COG block is decoded once, and the
    Chipper reads each run of adjacent chips with one window, assets in parallel threads.
    """
    xs = np.asarray(xs, dtype=np.int64)
    ys = np.asarray(ys, dtype=np.int64)
    if len(xs) == 0:
        return
    rows = rows_per_batch or _rows_per_batch(chipper, chipper.asset_keys)
    order = np.lexsort((xs, ys))
    # Batches: chips whose row falls in the same band of `rows` chip rows (aligned on the grid).
    band = ys[order] // rows
    cuts = np.flatnonzero(np.diff(band)) + 1
    for positions in np.split(order, cuts):
        yield positions, chipper.chips(xs[positions], ys[positions])


# =================================================================================================
# Plan and tasks
# =================================================================================================
def plan_training_set(selection: pa.Table, config: TrainingSetConfig) -> pa.Table:
    """The manifest: which chip goes to which shard and position (decided before any read).

    Rows are in training order (see :func:`training_order`); per collection, sample ``index`` ``i``
    goes to shard ``i // shard_size`` at position ``i % shard_size``.
    """
    table = _as_table(selection)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise StacchipError(f"the selection lacks the columns {missing}")
    unknown = sorted(set(_strings(table, "collection").tolist()) - set(config.bands))
    if unknown:
        raise StacchipError(f"the selection holds collections without configured bands: {unknown}")
    table = training_order(table, config.seed)
    n = table.num_rows
    coll = _strings(table, "collection")
    index = np.zeros(n, dtype=np.int64)
    for collection in dict.fromkeys(coll.tolist()):
        rows = np.flatnonzero(coll == collection)
        index[rows] = np.arange(len(rows))
    shard = (index // config.shard_size).astype(np.int32)
    position = (index % config.shard_size).astype(np.int32)
    if config.format == "npz":
        paths = [f"{c}/shard_{s:06d}.npz" for c, s in zip(coll.tolist(), shard.tolist())]
    else:
        paths = [f"{c}.zarr" for c in coll.tolist()]
    stride = table.column("chip_stride") if "chip_stride" in table.column_names else table.column("chip_size")
    micros = _timestamps_micros(table)
    columns = {
        "chipid": table.column("chipid"),
        "collection": table.column("collection"),
        "item_id": table.column("item_id"),
        "shard": pa.array(shard, pa.int32()),
        "position": pa.array(position, pa.int32()),
        "index": pa.array(index, pa.int64()),
        "path": pa.array(paths, pa.string()),
        "chip_index_x": table.column("chip_index_x"),
        "chip_index_y": table.column("chip_index_y"),
        "chip_size": table.column("chip_size"),
        "chip_stride": stride,
        "datetime": pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "item_href": table.column("item_href"),
        "bbox": table.column("bbox") if "bbox" in table.column_names else None,
    }
    if columns["bbox"] is None:
        lon, lat = chip_centres(table)  # from the WKB geometry
        columns["bbox"] = pa.StructArray.from_arrays([pa.array(lon), pa.array(lat), pa.array(lon), pa.array(lat)],
                                                     names=["xmin", "ymin", "xmax", "ymax"])
    return pa.table(columns)


@dataclass
class ChipTask:
    """Consecutive chips of one collection, processed by one worker (whole shards when writing)."""

    collection: str
    first_index: int  # collection-level sample index of the first chip
    item_href: np.ndarray  # object array of str
    xs: np.ndarray
    ys: np.ndarray
    norms: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.xs)

    def item_groups(self) -> Iterator[tuple[str, np.ndarray]]:
        """(item_href, row positions) per run of chips of the same item, in order."""
        if len(self) == 0:
            return
        change = np.flatnonzero(self.item_href[1:] != self.item_href[:-1]) + 1
        for rows in np.split(np.arange(len(self)), change):
            yield str(self.item_href[rows[0]]), rows


def make_tasks(plan: pa.Table, config: TrainingSetConfig, *, chips_per_task: int = 2048,
               whole_shards: bool = True, norms: Mapping[str, np.ndarray] | None = None) -> list[ChipTask]:
    """Split a plan into tasks of about ``chips_per_task`` chips, in plan order.

    With ``whole_shards`` a task ends on a shard boundary (one task writes each shard); otherwise
    on an item boundary (an item is never split).
    """
    coll = _strings(plan, "collection")
    hrefs = _strings(plan, "item_href")
    xs = plan.column("chip_index_x").to_numpy().astype(np.int64)
    ys = plan.column("chip_index_y").to_numpy().astype(np.int64)
    index = plan.column("index").to_numpy() if "index" in plan.column_names else None
    tasks: list[ChipTask] = []
    for collection in dict.fromkeys(coll.tolist()):
        rows = np.flatnonzero(coll == collection)
        n = len(rows)
        if whole_shards:
            size = config.shard_size
            per = max(1, int(math.ceil(max(chips_per_task, 1) / size))) * size
            bounds = list(range(0, n, per)) + [n]
        else:
            item_change = np.flatnonzero(hrefs[rows][1:] != hrefs[rows][:-1]) + 1
            bounds, count = [0], 0
            starts = np.concatenate([[0], item_change, [n]])
            for a, b in zip(starts[:-1], starts[1:]):
                count += b - a
                if count >= chips_per_task:
                    bounds.append(int(b))
                    count = 0
            if bounds[-1] != n:
                bounds.append(n)
        for a, b in zip(bounds[:-1], bounds[1:]):
            sel = rows[a:b]
            tasks.append(ChipTask(
                collection=collection,
                first_index=int(index[sel[0]]) if index is not None else int(a),
                item_href=hrefs[sel], xs=xs[sel], ys=ys[sel],
                norms={k: v[sel] for k, v in (norms or {}).items()},
            ))
    return tasks


def run_tasks(fn: Callable[..., Any], groups: Sequence[tuple[Sequence[Any], Mapping[str, Any]]], *,
              client: Any = None) -> list[Any]:
    """``fn(task, **kwargs)`` for every task of every ``(tasks, kwargs)`` group, in this process or
    on Dask workers (all groups submitted at once); results in group and task order either way."""
    if client is None:
        return [fn(task, **kwargs) for tasks, kwargs in groups for task in tasks]
    # retries: a task only writes its own shards under deterministic names (temp + rename), so
    # running it again after a lost worker gives the same files.
    futures = [f for tasks, kwargs in groups if tasks
               for f in client.map(fn, list(tasks), pure=False, retries=2, **kwargs)]
    try:
        return client.gather(futures)
    finally:
        for future in futures:
            future.release()


@contextlib.contextmanager
def dask_client(address: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                **cluster_options: Any) -> Iterator[Any]:
    """A ``distributed.Client``: connected to the scheduler at ``address``, or to a new
    ``LocalCluster`` of worker processes (``n_workers`` default: one per CPU, one thread each, as
    each task already reads assets in parallel threads). Closed (and the cluster stopped) on exit."""
    import distributed

    if address:
        with distributed.Client(address) as client:
            yield client
        return
    options = {"processes": True, "dashboard_address": None, **cluster_options}
    with distributed.LocalCluster(n_workers=n_workers or (os.cpu_count() or 1), threads_per_worker=threads_per_worker,
                                  **options) as cluster, distributed.Client(cluster) as client:
        yield client


def iter_task_pixels(task: ChipTask, layout: CollectionLayout, *, mountpath: str | None = None,
                     href_policy: HrefPolicy | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], Chipper]]:
    """Pixels of a task's chips: ``(task rows, {asset: native array}, chipper)``, item by item.

    One item JSON load and one Chipper (datasets opened once) per item of the task.
    """
    for href, rows in task.item_groups():
        item = load_item(href)
        with Chipper(_indexer(item, layout.chip_size, layout.chip_stride, href_policy), mountpath=mountpath,
                     assets=layout.assets) as chipper:
            _check_layout(layout, chipper)
            for positions, pixels in iter_item_chips(chipper, task.xs[rows], task.ys[rows]):
                yield rows[positions], pixels, chipper


# =================================================================================================
# Shard writers
# =================================================================================================
def _write_npz(path: Path, arrays: Mapping[str, np.ndarray], level: int) -> int:
    """An npz (np.load-able) written byte-for-byte deterministically (fixed zip timestamps and
    attributes) to a temporary name and renamed; returns its size. Each member carries the zip
    format's CRC-32, which np.load checks."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    method = zipfile.ZIP_DEFLATED if level > 0 else zipfile.ZIP_STORED
    try:
        with zipfile.ZipFile(tmp, "w", compression=method) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                if level > 0:  # ZipInfo.compress_level from Python 3.13, _compresslevel before
                    setattr(info, "compress_level" if hasattr(zipfile.ZipInfo, "compress_level") else "_compresslevel", level)
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
        size = tmp.stat().st_size
        os.replace(tmp, path)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _zarr_codecs(level: int) -> dict[str, Any]:
    from zarr.codecs import BloscCodec

    return {"compressors": [BloscCodec(cname="zstd", clevel=max(level, 1), shuffle="shuffle", typesize=4, blocksize=0)]}


def create_zarr_group(path: Path, layout: CollectionLayout, n: int, config: TrainingSetConfig) -> None:
    """The empty Zarr v3 group of one collection (arrays sized for ``n`` samples)."""
    import zarr

    cs, c = layout.chip_size, layout.num_channels
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={
        "stacchip_assets_training_set": FORMAT_VERSION,
        "collection": layout.collection,
        "channels": [ch.name for ch in layout.channels],
        "layout": layout.to_dict(),
        "shard_size": int(config.shard_size),
    })
    group.create_array(
        "pixels", shape=(n, c, cs, cs), dtype="float32", chunks=(1, c, cs, cs),
        shards=(int(config.shard_size), c, cs, cs), fill_value=0.0,
        dimension_names=("sample", "channel", "y", "x"), **_zarr_codecs(config.compress_level),
    )
    for key in NORM_KEYS:
        group.create_array(
            key, shape=(n, 2), dtype="float32", chunks=(int(config.shard_size), 2), fill_value=0.0,
            dimension_names=("sample", "sincos"), **_zarr_codecs(config.compress_level),
        )


class _ShardSink:
    """Fills shard buffers in place from native pixel batches and writes each shard when full.

    Writes (deflate / Blosc compression and file I/O, which release the GIL) run in background
    threads (one per CPU, at most 4) while the next chips are read, with at most one more shard
    waiting than there are writers; the bytes of a shard do not depend on that timing.
    """

    WRITERS = max(1, min(4, os.cpu_count() or 1))
    MAX_PENDING = WRITERS + 1

    def __init__(self, task: ChipTask, layout: CollectionLayout, config: TrainingSetConfig, root: Path, total: int):
        self.task, self.layout, self.config, self.root = task, layout, config, Path(root)
        self.total = total  # samples of the collection (the last shard may be short)
        self.buffers: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.written: list[dict[str, Any]] = []
        self.slices = layout.asset_channels()
        self._zarr = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _shard_len(self, shard: int) -> int:
        size = self.config.shard_size
        return min(size, self.total - shard * size)

    def add(self, rows: np.ndarray, pixels: Mapping[str, np.ndarray]) -> None:
        size = self.config.shard_size
        index = self.task.first_index + rows
        shards, slots = index // size, index % size
        for shard in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == shard)
            buf = self.buffers.get(shard)
            if buf is None:
                cs = self.layout.chip_size
                buf = self.buffers[shard] = np.empty((self._shard_len(shard), self.layout.num_channels, cs, cs), np.float32)
                self.filled[shard] = 0
            dest = slots[sel]
            contiguous = bool(np.all(np.diff(dest) == 1) and np.all(np.diff(sel) == 1))
            for asset, c0, nc in self.slices:
                src = pixels[asset]
                if contiguous:  # one cast-and-copy into the buffer, no fancy-index temporaries
                    np.copyto(buf[dest[0] : dest[-1] + 1, c0 : c0 + nc], src[sel[0] : sel[-1] + 1], casting="unsafe")
                else:
                    buf[dest, c0 : c0 + nc] = src[sel]
            self.filled[shard] += len(sel)
            if self.filled[shard] == len(buf):
                self._submit(shard)

    def _norms(self, shard: int) -> dict[str, np.ndarray]:
        start = shard * self.config.shard_size - self.task.first_index
        stop = start + self._shard_len(shard)
        return {k: self.task.norms[k][start:stop] for k in NORM_KEYS}

    def _submit(self, shard: int) -> None:
        buf = self.buffers.pop(shard)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.WRITERS, thread_name_prefix="shard-writer")
        if self.config.format == "zarr" and self._zarr is None:  # opened here, not raced by two writers
            import zarr

            self._zarr = zarr.open_group(str(self.root / f"{self.layout.collection}.zarr"), mode="r+")
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, shard, buf, self._norms(shard)))

    def _write(self, shard: int, buf: np.ndarray, norms: Mapping[str, np.ndarray]) -> None:
        collection = self.layout.collection
        if self.config.format == "npz":
            rel = f"{collection}/shard_{shard:06d}.npz"
            size = _write_npz(self.root / rel, {"pixels": buf, **norms}, int(self.config.compress_level))
            self.written.append({"collection": collection, "shard": shard, "path": rel, "samples": len(buf), "bytes": size})
        else:
            start = shard * self.config.shard_size
            self._zarr["pixels"][start : start + len(buf)] = buf  # whole shards: one file each, atomic
            for key, values in norms.items():
                self._zarr[key][start : start + len(buf)] = values
            self.written.append({"collection": collection, "shard": shard, "path": f"{collection}.zarr",
                                 "samples": len(buf)})

    def close(self, *, failed: bool = False) -> None:
        """Wait for the pending writes (re-raising their errors) and check every shard was filled."""
        try:
            for future in self._pending:
                if failed:
                    future.cancel()
                else:
                    future.result()
        finally:
            self._pending = []
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if not failed and self.buffers:
            raise StacchipError(f"{self.layout.collection}: shards {sorted(self.buffers)} were not filled "
                                f"({self.filled}): the plan and the reads disagree")


def _write_task(task: ChipTask, *, root: str, layout: CollectionLayout, config: TrainingSetConfig, total: int,
                mountpath: str | None = None, statistics: bool = False,
                href_policy: HrefPolicy | None = None) -> dict[str, Any]:
    """Read a task's chips and write its shards (runs in this process or on a Dask worker)."""
    sink = _ShardSink(task, layout, config, Path(root), total)
    stats = None
    if statistics:
        from stacchip_assets.training.band_stats import CollectionAccumulator

        stats = CollectionAccumulator(layout)
    try:
        for rows, pixels, chipper in iter_task_pixels(task, layout, mountpath=mountpath, href_policy=href_policy):
            sink.add(rows, pixels)
            if stats is not None:
                stats.update(pixels, chipper)
    except BaseException:
        sink.close(failed=True)
        raise
    sink.close()
    return {"shards": sorted(sink.written, key=lambda s: s["shard"]), "statistics": stats}


# =================================================================================================
# The training set
# =================================================================================================
def _stage_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    return stage


def _publish(stage: Path, out_dir: Path, overwrite: bool) -> None:
    old = None
    if out_dir.exists():
        if not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out_dir, old)
    os.replace(stage, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_training_set(
    selection: pa.Table,
    config: TrainingSetConfig,
    out_dir: str | os.PathLike[str],
    *,
    client: Any = None,
    chips_per_task: int = 2048,
    mountpath: str | None = None,
    overwrite: bool = False,
    statistics: bool = False,
    href_policy: HrefPolicy | None = None,
) -> pa.Table:
    """Write the shards of a selection (see :func:`select_chips`) and return the manifest.

    ``client``: a ``distributed.Client``; tasks of whole shards then run on its workers (which must
    see ``out_dir``), with byte-identical output. ``statistics=True`` also computes the band
    statistics in the same pass (``band_statistics.json`` / ``.parquet`` in ``out_dir``).
    ``overwrite`` replaces an existing, non-empty ``out_dir``; the new set appears atomically.
    ``href_policy``: what the stored items' asset hrefs may point at (they are untrusted input);
    default :func:`stacchip_assets.core.hrefs.default_read_policy`. HrefPolicyError before GDAL opens anything.
    """
    out_dir = Path(out_dir).absolute()
    plan = plan_training_set(selection, config)
    layouts = collection_layouts(plan, config, mountpath=mountpath, href_policy=href_policy) if plan.num_rows else {}
    norms = chip_norms(plan, legacy_latlon_swap=config.legacy_latlon_swap)
    tasks = make_tasks(plan, config, chips_per_task=chips_per_task, whole_shards=True, norms=norms)
    coll = _strings(plan, "collection")
    totals = {c: int((coll == c).sum()) for c in layouts}

    stage = _stage_dir(out_dir)
    try:
        for collection, layout in layouts.items():
            if config.format == "npz":
                (stage / collection).mkdir()
            else:
                create_zarr_group(stage / f"{collection}.zarr", layout, totals[collection], config)
        groups = [  # one group per collection: the layout and the sample count differ
            ([t for t in tasks if t.collection == collection],
             dict(root=str(stage), layout=layout, config=config, total=totals[collection], mountpath=mountpath,
                  statistics=statistics, href_policy=href_policy))
            for collection, layout in layouts.items()
        ]
        results: list[dict[str, Any]] = run_tasks(_write_task, groups, client=client)
        shards = sorted((s for r in results for s in r["shards"]), key=lambda s: (s["collection"], s["shard"]))
        expected = sum(int(math.ceil(t / config.shard_size)) for t in totals.values())
        if len(shards) != expected:
            raise StacchipError(f"wrote {len(shards)} shards, the plan has {expected}")
        pq.write_table(plan.drop_columns(["bbox"]), stage / MANIFEST_NAME, compression="zstd")
        info = {
            "format_version": FORMAT_VERSION,
            "format": config.format,
            "config": config.to_dict(),
            "samples": plan.num_rows,
            "collections": {
                c: {"samples": totals[c], "shards": int(math.ceil(totals[c] / config.shard_size)),
                    "layout": layouts[c].to_dict()} for c in layouts
            },
            "shards": shards,
            "npz_keys": ["pixels", *NORM_KEYS],
            "normalization": {
                "lat_norm": "(sin(lat*pi/180), cos(lat*pi/180)), lat = centre of the footprint bbox",
                "lon_norm": "(sin(lon*pi/180), cos(lon*pi/180)), lon = centre of the footprint bbox",
                "week_norm": "(sin(w*2*pi/52), cos(w*2*pi/52)), w = ISO week of the UTC datetime",
                "hour_norm": "(sin(h*2*pi/24), cos(h*2*pi/24)), h = UTC hour (integer)",
                "legacy_latlon_swap": bool(config.legacy_latlon_swap),
            },
        }
        (stage / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if statistics:
            from stacchip_assets.training.band_stats import merge_results, write_band_statistics_json, write_band_statistics_parquet

            records = merge_results([r["statistics"] for r in results], layouts)
            write_band_statistics_json(records, stage / "band_statistics.json")
            write_band_statistics_parquet(records, stage / "band_statistics.parquet")
        _publish(stage, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("training set: %d samples in %d shards (%s) at %s", plan.num_rows, len(shards), config.format, out_dir)
    return pq.read_table(out_dir / MANIFEST_NAME)


# =================================================================================================
# Reading a training set back
# =================================================================================================
def read_training_set_info(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The training_set.json of a training set folder."""
    return json.loads((Path(out_dir) / INFO_NAME).read_text())


def read_manifest(out_dir: str | os.PathLike[str]) -> pa.Table:
    """The manifest of a training set folder."""
    return pq.read_table(Path(out_dir) / MANIFEST_NAME)


def load_shard(out_dir: str | os.PathLike[str], collection: str, shard: int) -> dict[str, np.ndarray]:
    """The arrays of one shard (npz or Zarr): ``pixels`` (n, C, H, W) and the four norms (n, 2)."""
    out_dir = Path(out_dir)
    info = read_training_set_info(out_dir)
    size = int(info["config"]["shard_size"])
    validate_id(collection, "collection")
    if info["format"] == "npz":
        with np.load(out_dir / collection / f"shard_{int(shard):06d}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in ("pixels", *NORM_KEYS)}
    import zarr

    group = zarr.open_group(str(out_dir / f"{collection}.zarr"), mode="r")
    start = int(shard) * size
    return {k: group[k][start : start + size] for k in ("pixels", *NORM_KEYS)}
