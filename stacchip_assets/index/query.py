"""Chips of the combined index by collection, date range, bbox, cloud and nodata.

```python
from stacchip_assets.index.query import query_chips, query_chips_gdf

table = query_chips(base, collections=["sentinel-2-l2a"], date_range=("2021-06-01", "2021-06-30"),
                    bbox=(5.0, 45.0, 6.0, 46.0), max_cloud=0.2)          # pyarrow.Table
frame = query_chips_gdf(base, bbox=(5.0, 45.0, 6.0, 46.0))                # geopandas.GeoDataFrame
```

The result is exactly the rows of the per-item layout (``{base}/combined/{collection}/{item}.parquet``)
that pass the filters, whatever the state of compaction: when the compacted tier exists
(:mod:`stacchip_assets.index.compaction`), the runs are read minus pending and tombstoned items, plus the
pending items' per-item files; otherwise the per-item files are read directly.

Filters (all optional, combined with AND):

- ``collections``: collection ids.
- ``date_range``: ``(start, end)``, both inclusive, on the ``date`` column; ISO strings, ``date`` or
  ``datetime`` (its date); either end may be None.
- ``bbox``: ``(xmin, ymin, xmax, ymax)`` in lon/lat; a chip matches when its bbox (the GeoParquet
  covering column) overlaps the box, edges included. ``xmin > xmax`` means a box across the
  antimeridian; footprints stored with longitudes past 180 are matched by boxes near -180 too.
  ``query_chips_gdf(..., exact=True)`` keeps only footprints that intersect the box itself.
- ``max_cloud`` / ``max_nodata``: ``cloud_cover_percentage <= max_cloud`` (fractions in [0, 1], compared
  in float32, the column's type, so a stored 0.3 passes ``max_cloud=0.3``).

Filters are pushed down to Parquet: runs are chosen from the manifest (collection, years, bbox, dates),
then row groups by their statistics on ``bbox.xmin/ymin/xmax/ymax``, ``date`` and the fractions.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.lsm_manifest import Manifest, Run, load_manifest
from stacchip_assets.io.geoparquet import INDEX_SCHEMA, geo_metadata, with_geo_metadata
from stacchip_assets.io.storage import Storage

Box = tuple[float, float, float, float]


def _as_date(value: Any) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError as exc:
            raise ValueError(f"date_range: {value!r} is not an ISO date (YYYY-MM-DD)") from exc
    raise TypeError(f"date_range: {value!r} is not a date")


def query_boxes(bbox: Sequence[float] | None) -> list[Box] | None:
    """The boxes a query bbox stands for: itself, split or shifted by 360 degrees so that it also
    matches footprints stored across the antimeridian (longitudes past 180)."""
    if bbox is None:
        return None
    if len(bbox) != 4:
        raise ValueError(f"bbox must be (xmin, ymin, xmax, ymax), got {bbox!r}")
    xmin, ymin, xmax, ymax = (float(v) for v in bbox)
    if ymin > ymax:
        raise ValueError(f"bbox {bbox!r}: ymin > ymax")
    if xmin > xmax:  # across the antimeridian
        xmax += 360.0
    boxes = [(xmin, ymin, xmax, ymax)]
    if xmin < -90.0:  # footprints across the antimeridian are stored past 180: meet them there too
        boxes.append((xmin + 360.0, ymin, xmax + 360.0, ymax))
    if xmax > 180.0:  # a box given past 180 also meets footprints stored from -180
        boxes.append((xmin - 360.0, ymin, xmax - 360.0, ymax))
    return boxes


def chip_filter(
    collections: Iterable[str] | None = None,
    date_range: tuple[Any, Any] | None = None,
    bbox: Sequence[float] | None = None,
    max_cloud: float | None = None,
    max_nodata: float | None = None,
) -> pads.Expression | None:
    """The filters as one pyarrow dataset expression (None when there is no filter)."""
    parts: list[pads.Expression] = []
    if collections is not None:
        parts.append(pc.field("collection").isin(pa.array(sorted(set(collections)), pa.string())))
    if date_range is not None:
        start, end = (_as_date(v) for v in date_range)
        if start is not None:
            parts.append(pc.field("date") >= pa.scalar(start, pa.date32()))
        if end is not None:
            parts.append(pc.field("date") <= pa.scalar(end, pa.date32()))
    boxes = query_boxes(bbox)
    if boxes is not None:
        overlaps = [
            (pc.field("bbox", "xmax") >= b[0]) & (pc.field("bbox", "xmin") <= b[2])
            & (pc.field("bbox", "ymax") >= b[1]) & (pc.field("bbox", "ymin") <= b[3])
            for b in boxes
        ]
        either = overlaps[0]
        for other in overlaps[1:]:
            either = either | other
        parts.append(either)
    if max_cloud is not None:
        parts.append(pc.field("cloud_cover_percentage") <= pa.scalar(float(max_cloud), pa.float32()))
    if max_nodata is not None:
        parts.append(pc.field("nodata_percentage") <= pa.scalar(float(max_nodata), pa.float32()))
    if not parts:
        return None
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr


@dataclass
class Scan:
    """Some files read with one filter."""

    keys: list[str]
    filter: pads.Expression | None
    #: per-item files: some may be gone (removed items), which is not an error
    may_be_missing: bool = False
    hidden: list[str] = field(default_factory=list)


@dataclass
class QueryPlan:
    """What a query reads: which files, with which filter."""

    storage: Storage
    scans: list[Scan]
    layout: str  # "compacted" or "per-item"
    runs_total: int = 0
    runs_selected: int = 0
    pending_files: int = 0

    @property
    def keys(self) -> list[str]:
        return [k for s in self.scans for k in s.keys]


def _and(a: pads.Expression | None, b: pads.Expression | None) -> pads.Expression | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def plan_query(
    base_or_storage: Storage | str | None = None,
    collections: Iterable[str] | None = None,
    date_range: tuple[Any, Any] | None = None,
    bbox: Sequence[float] | None = None,
    max_cloud: float | None = None,
    max_nodata: float | None = None,
    *,
    layout: str = "auto",
) -> QueryPlan:
    """The files and filters of a query (``layout``: "auto", "compacted" or "per-item")."""
    storage = base_or_storage if isinstance(base_or_storage, Storage) else Storage(base_or_storage)
    wanted = None if collections is None else sorted(set(collections))
    expr = chip_filter(wanted, date_range, bbox, max_cloud, max_nodata)
    if layout not in ("auto", "compacted", "per-item"):
        raise ValueError(f"layout must be 'auto', 'compacted' or 'per-item', not {layout!r}")
    manifest: Manifest | None = None if layout == "per-item" else load_manifest(storage)
    if manifest is None:
        if layout == "compacted":
            raise StorageError(f"{storage.uri('combined')} has no compacted tier (run stacchip_assets.index.compaction.compact)")
        entries = CombinedIndex(storage).entries()
        keys = sorted(e.key for (c, _), e in entries.items() if wanted is None or c in wanted)
        return QueryPlan(storage, [Scan(keys, expr)] if keys else [], "per-item")

    start, end = (None, None) if date_range is None else (_as_date(date_range[0]), _as_date(date_range[1]))
    boxes = query_boxes(bbox)
    selected = [
        r for r in manifest.runs
        if (wanted is None or r.collection in wanted) and r.overlaps(boxes, start, end)
    ]
    scans: list[Scan] = []
    by_collection: dict[str, list[Run]] = {}
    for run in selected:
        by_collection.setdefault(run.collection, []).append(run)
    for collection, runs in sorted(by_collection.items()):
        pending = set(manifest.pending.get(collection, {}))
        tombs = manifest.tombstones.get(collection, {})
        # runs hide the same items when the same tombstones are newer than them: group by that
        groups: dict[frozenset[str], list[str]] = {}
        for run in runs:
            hidden = frozenset(pending | {i for i, t in tombs.items() if t > run.gen})
            groups.setdefault(hidden, []).append(run.key)
        for hidden, keys in groups.items():
            hide = None
            if hidden:
                hide = ~pc.field("item_id").isin(pa.array(sorted(hidden), pa.string()))
            scans.append(Scan(sorted(keys), _and(expr, hide), hidden=sorted(hidden)))
    pending_keys = sorted(
        combined_key(c, i) for c, items in manifest.pending.items() if wanted is None or c in wanted for i in items
    )
    if pending_keys:
        scans.append(Scan(pending_keys, expr, may_be_missing=True))
    return QueryPlan(storage, scans, "compacted", runs_total=len(manifest.runs), runs_selected=len(selected),
                     pending_files=len(pending_keys))


def _scan(storage: Storage, scan: Scan, columns: list[str] | None, use_threads: bool) -> pa.Table:
    keys = scan.keys
    for attempt in (0, 1):
        try:
            dataset = pads.dataset([storage.path(k) for k in keys], schema=INDEX_SCHEMA, format="parquet", filesystem=storage.fs)
            return dataset.to_table(columns=columns, filter=scan.filter, use_threads=use_threads)
        except (OSError, pa.ArrowException) as exc:
            if attempt or not scan.may_be_missing:
                raise StorageError(f"cannot read the combined index under {storage.uri('combined')}: {exc}") from exc
            infos = storage.fs.get_file_info([storage.path(k) for k in keys])
            keys = [k for k, info in zip(keys, infos) if info.type == pafs.FileType.File]
            if not keys:
                break
    return INDEX_SCHEMA.empty_table().select(columns) if columns else INDEX_SCHEMA.empty_table()


def plan_row_groups(plan: QueryPlan) -> dict[str, int]:
    """What a plan reads, from the Parquet footers: the files it opens, their row groups and
    compressed bytes, and the row groups (and compressed bytes) whose statistics pass the scan
    filters -- the ones the query decodes. Reads only footers (O(files opened))."""
    files = row_groups_total = row_groups_read = bytes_total = bytes_read = 0
    for scan in plan.scans:
        keys = scan.keys
        if scan.may_be_missing and keys:
            infos = plan.storage.fs.get_file_info([plan.storage.path(k) for k in keys])
            keys = [k for k, info in zip(keys, infos) if info.type == pafs.FileType.File]
        if not keys:
            continue
        try:
            dataset = pads.dataset([plan.storage.path(k) for k in keys], schema=INDEX_SCHEMA, format="parquet",
                                   filesystem=plan.storage.fs)
            for fragment in dataset.get_fragments():
                meta = fragment.metadata
                files += 1
                row_groups_total += meta.num_row_groups
                sizes = [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
                         for g in range(meta.num_row_groups)]
                bytes_total += sum(sizes)
                for piece in fragment.split_by_row_group(filter=scan.filter, schema=INDEX_SCHEMA):
                    row_groups_read += 1
                    bytes_read += sizes[piece.row_groups[0].id]
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot read the footers of the combined index under {plan.storage.uri('combined')}: {exc}") from exc
    return {"files_opened": files, "row_groups_total": row_groups_total, "row_groups_read": row_groups_read,
            "row_group_bytes_read": bytes_read, "row_group_bytes_total": bytes_total}


def execute(plan: QueryPlan, columns: list[str] | None = None, *, use_threads: bool = True) -> pa.Table:
    """Run a :class:`QueryPlan`; one table with GeoParquet metadata when it has the geometry."""
    if columns is not None:
        unknown = [c for c in columns if c not in INDEX_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the index has {INDEX_SCHEMA.names}")
    tables = [_scan(plan.storage, s, columns, use_threads) for s in plan.scans if s.keys]
    schema = INDEX_SCHEMA if columns is None else pa.schema([INDEX_SCHEMA.field(c) for c in columns])
    tables = [t.replace_schema_metadata(None) for t in tables]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    names = table.column_names
    if "geometry" in names and "bbox" in names:
        return with_geo_metadata(table) if table.num_rows else with_geo_metadata(table, None)
    if "geometry" in names:
        meta = geo_metadata(None)
        meta["columns"]["geometry"].pop("covering", None)
        return table.replace_schema_metadata({b"geo": json.dumps(meta).encode()})
    return table


def query_chips(
    base_or_storage: Storage | str | None = None,
    collections: Iterable[str] | None = None,
    date_range: tuple[Any, Any] | None = None,
    bbox: Sequence[float] | None = None,
    max_cloud: float | None = None,
    max_nodata: float | None = None,
    columns: list[str] | None = None,
    *,
    layout: str = "auto",
    use_threads: bool = True,
) -> pa.Table:
    """The chips of the combined index that pass the filters, as a pyarrow Table (module docstring)."""
    plan = plan_query(base_or_storage, collections, date_range, bbox, max_cloud, max_nodata, layout=layout)
    return execute(plan, columns, use_threads=use_threads)


def query_chips_gdf(
    base_or_storage: Storage | str | None = None,
    collections: Iterable[str] | None = None,
    date_range: tuple[Any, Any] | None = None,
    bbox: Sequence[float] | None = None,
    max_cloud: float | None = None,
    max_nodata: float | None = None,
    columns: list[str] | None = None,
    *,
    exact: bool = False,
    layout: str = "auto",
):
    """As :func:`query_chips`, as a GeoDataFrame (CRS OGC:CRS84, footprints as shapely polygons).

    ``exact=True`` keeps only the chips whose footprint intersects ``bbox`` (not just its bbox).
    """
    import geopandas
    import numpy as np
    import shapely

    if columns is not None and "geometry" not in columns:
        columns = [*columns, "geometry"]
    table = query_chips(base_or_storage, collections, date_range, bbox, max_cloud, max_nodata, columns, layout=layout)
    geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)) if table.num_rows else []
    frame = table.drop_columns(["geometry"]).to_pandas()
    frame.insert(table.column_names.index("geometry"), "geometry", geopandas.GeoSeries(geometry, index=frame.index, crs="OGC:CRS84"))
    gdf = geopandas.GeoDataFrame(frame, geometry="geometry", crs="OGC:CRS84")
    if exact and bbox is not None and len(gdf):
        mask = np.zeros(len(gdf), dtype=bool)
        for b in query_boxes(bbox) or []:  # not empty: bbox is not None
            mask |= gdf.geometry.intersects(shapely.box(*b)).to_numpy()
        gdf = gdf[mask]
    return gdf


__all__ = ["QueryPlan", "chip_filter", "execute", "plan_query", "plan_row_groups", "query_boxes", "query_chips",
           "query_chips_gdf"]
