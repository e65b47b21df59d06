"""What goes into a training set and how it is written: :class:`TrainingSetConfig` and the folder's names.

Pure (no files): the config validates and normalizes its fields once, so every later step can rely on them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stacchip_assets.core.ids import validate_id

__all__ = ["FORMAT_VERSION", "INFO_NAME", "MANIFEST_NAME", "NORM_KEYS", "REQUIRED_COLUMNS", "TrainingSetConfig"]

#: Layout version of the training-set folder (training_set.json "format_version").
FORMAT_VERSION = 1
#: Keys of the normalized metadata, in prechip's npz order (after "pixels").
NORM_KEYS = ("lon_norm", "lat_norm", "week_norm", "hour_norm")
MANIFEST_NAME = "manifest.parquet"
INFO_NAME = "training_set.json"
#: Columns an index table needs for selection and extraction.
REQUIRED_COLUMNS = ("chipid", "collection", "item_id", "chip_index_x", "chip_index_y", "item_href", "chip_size")


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
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingSetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training-set settings {unknown}; known: {sorted(known)}")
        return cls(**dict(values))
