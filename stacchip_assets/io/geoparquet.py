"""The chip index as a GeoParquet 1.1 table: schema, construction, atomic write and read.

Geometry is WKB in OGC:CRS84 with a `bbox` covering column, so `geopandas.read_parquet`,
`pyarrow.dataset` and DuckDB read the files as they are and can skip row groups by bounding box.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import shapely

from stacchip_assets.core.grid import WGS84
from stacchip_assets.errors import StorageError
from stacchip_assets.io.atomic import atomic_path

GEOPARQUET_VERSION = "1.1.0"
#: Rows per Parquet row group of a per-item index.
ROW_GROUP_ROWS = 128 * 1024

BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)

#: Column order and types of every chip index (DESIGN section 3).
INDEX_FIELDS: list[pa.Field] = [
    pa.field("chipid", pa.string(), nullable=False),
    pa.field("date", pa.date32(), nullable=False),
    pa.field("chip_index_x", pa.uint16(), nullable=False),
    pa.field("chip_index_y", pa.uint16(), nullable=False),
    pa.field("cloud_cover_percentage", pa.float32(), nullable=False),
    pa.field("nodata_percentage", pa.float32(), nullable=False),
    pa.field("geometry", pa.binary(), nullable=False),
    pa.field("bbox", BBOX_TYPE, nullable=False),
    pa.field("collection", pa.string()),
    pa.field("item_id", pa.string(), nullable=False),
    # Enough to get the pixels back with no other input:
    pa.field("datetime", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("item_href", pa.string()),
    pa.field("chip_size", pa.uint16(), nullable=False),
    pa.field("chip_stride", pa.uint16(), nullable=False),
]
INDEX_SCHEMA = pa.schema(INDEX_FIELDS)


def geo_metadata(geometry_bbox: list[float] | None) -> dict[str, Any]:
    """The `geo` file metadata of GeoParquet 1.1 for the index's geometry column."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": WGS84.to_json_dict(),
        "edges": "planar",
        "orientation": "counterclockwise",
        "covering": {
            "bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"], "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}
        },
    }
    if geometry_bbox is not None:
        column["bbox"] = geometry_bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def with_geo_metadata(table: pa.Table, overall: list[float] | None = None) -> pa.Table:
    """Attach `geo` metadata, with the overall bbox given or recomputed from the covering column."""
    if overall is None and table.num_rows:
        bbox = table.column("bbox").combine_chunks()
        overall = [
            float(bbox.field("xmin").to_numpy().min()),
            float(bbox.field("ymin").to_numpy().min()),
            float(bbox.field("xmax").to_numpy().max()),
            float(bbox.field("ymax").to_numpy().max()),
        ]
    metadata = dict(table.schema.metadata or {})
    metadata[b"geo"] = json.dumps(geo_metadata(overall)).encode()
    return table.replace_schema_metadata(metadata)


def bbox_array(polygons: np.ndarray) -> pa.StructArray:
    """The covering `bbox` struct column of an array of geometries."""
    bounds = shapely.bounds(polygons) if len(polygons) else np.empty((0, 4))
    return pa.StructArray.from_arrays(
        [numeric_array(bounds[:, i], pa.float64()) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
    )


def numeric_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A fixed-width Arrow array over a numpy buffer, zero-copy.

    (`pa.array(ndarray)` would import pandas on first use, 0.2 s for nothing.)
    """
    values = np.ascontiguousarray(values)
    if values.dtype.itemsize * 8 != type_.bit_width:
        raise TypeError(f"{values.dtype} does not fit the Arrow type {type_}")
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _varwidth_array(values: list, type_: pa.DataType) -> pa.Array:
    """A string/binary Arrow array built from offsets and one data buffer (None becomes null)."""
    encoded = [v.encode() if isinstance(v, str) else v for v in values]
    lengths = np.fromiter((0 if v is None else len(v) for v in encoded), dtype=np.int32, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(v for v in encoded if v is not None)
    validity = None
    nulls = [v is None for v in encoded]
    if any(nulls):
        validity = pa.py_buffer(np.packbits(~np.array(nulls), bitorder="little"))
    return pa.Array.from_buffers(type_, len(encoded), [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=sum(nulls))


def build_index_table(columns: dict[str, Any], polygons: np.ndarray) -> pa.Table:
    """An index table in INDEX_SCHEMA from column values (numpy arrays for numeric columns,
    lists for strings) and shapely footprints."""
    arrays: dict[str, pa.Array] = {}
    for field in INDEX_FIELDS:
        if field.name == "geometry":
            arrays[field.name] = _varwidth_array(list(shapely.to_wkb(polygons)) if len(polygons) else [], pa.binary())
        elif field.name == "bbox":
            arrays[field.name] = bbox_array(polygons)
        elif isinstance(columns[field.name], np.ndarray):
            arrays[field.name] = numeric_array(columns[field.name], field.type)
        else:
            arrays[field.name] = _varwidth_array(list(columns[field.name]), field.type)
    overall = [float(v) for v in shapely.total_bounds(polygons)] if len(polygons) else None
    return with_geo_metadata(pa.Table.from_arrays(list(arrays.values()), schema=INDEX_SCHEMA), overall)


def empty_index_table() -> pa.Table:
    return with_geo_metadata(INDEX_SCHEMA.empty_table())


def _split_uri(uri: str | os.PathLike, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, str(uri)
    text = str(uri)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def encode_index(table: pa.Table) -> bytes:
    """The GeoParquet bytes of an index (``geo`` metadata added if missing), for one-PUT object writes."""
    if b"geo" not in (table.schema.metadata or {}):
        table = with_geo_metadata(table)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def write_index(table: pa.Table, uri: str | os.PathLike, filesystem: pafs.FileSystem | None = None, *,
                tmp_dir: str | os.PathLike | None = None) -> str:
    """Write an index as GeoParquet, atomically: readers see the old file or the new one, never half.

    Local paths go through :func:`stacchip_assets.io.atomic.atomic_path`: a temporary in `tmp_dir` (a
    folder on the same filesystem; `storage.Storage` passes its ``{base}/.tmp``, where killed writes are
    cleaned up) or else a hidden sibling ``.{host}.{pid}.{random}.tmp``, renamed over the target;
    object stores (s3://) get the whole file in one upload, which becomes visible only when it
    completes (pyarrow may use a multipart upload; `storage.Storage` uses one boto3 PUT).
    """
    if b"geo" not in (table.schema.metadata or {}):
        table = with_geo_metadata(table)
    fs, path = _split_uri(uri, filesystem)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with atomic_path(path, tmp_dir=tmp_dir) as tmp:
                pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        else:
            data = encode_index(table)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as out:  # one PUT for small objects
                out.write(data)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write index {uri}: {exc}") from exc
    return str(uri)


def read_index(uri: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read an index file written by `write_index` (or by stacchip) as a pyarrow Table."""
    fs, path = _split_uri(uri, filesystem)
    try:
        return pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read index {uri}: {exc}") from exc


