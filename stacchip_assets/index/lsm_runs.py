"""The run files of the compacted tier: the Hilbert sort key, writing a run (+ its ``.items.json``)
and reading runs and per-item files back (see :mod:`stacchip_assets.index.compaction`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined_layout import collection_folder
from stacchip_assets.index.lsm_manifest import RUNS_DIR, CompactionSettings, Run
from stacchip_assets.io.geoparquet import INDEX_SCHEMA, with_geo_metadata
from stacchip_assets.io.storage import FileEntry, Storage

#: Columns that get Parquet min/max statistics (the ones queries filter on, plus cheap ones).
STATS_COLUMNS = [
    "chipid", "date", "chip_index_x", "chip_index_y", "cloud_cover_percentage", "nodata_percentage",
    "bbox.xmin", "bbox.ymin", "bbox.xmax", "bbox.ymax", "collection", "item_id", "datetime",
    "chip_size", "chip_stride",
]
#: Columns dictionary-encoded (few distinct values per row group).
DICTIONARY_COLUMNS = ["date", "collection", "item_id", "datetime", "item_href", "chip_size", "chip_stride"]


def hilbert_index(x: np.ndarray, y: np.ndarray, order: int = 16) -> np.ndarray:
    """Hilbert curve index of integer cell coordinates in [0, 2**order) (vectorized)."""
    n = np.uint64(1 << order)
    x = x.astype(np.uint64).copy()
    y = y.astype(np.uint64).copy()
    d = np.zeros(len(x), dtype=np.uint64)
    s = np.uint64(1 << (order - 1))
    one = np.uint64(1)
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((np.uint64(3) * rx.astype(np.uint64)) ^ ry.astype(np.uint64))
        # rotate the quadrant
        flip = (~ry) & rx
        x = np.where(flip, n - one - x, x)
        y = np.where(flip, n - one - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s = s // np.uint64(2)
    return d


def spatial_key(table: pa.Table, order: int = 16) -> np.ndarray:
    """The sort key of a run: Hilbert index of each chip's bbox centre on a 2**order grid over the globe."""
    bbox = table.column("bbox").combine_chunks() if table.num_rows else None
    if bbox is None:
        return np.zeros(0, dtype=np.uint64)
    cx = (bbox.field("xmin").to_numpy() + bbox.field("xmax").to_numpy()) / 2
    cy = (bbox.field("ymin").to_numpy() + bbox.field("ymax").to_numpy()) / 2
    cells = float(1 << order)
    ix = np.clip(((cx + 180.0) / 360.0 * cells).astype(np.int64), 0, (1 << order) - 1)
    iy = np.clip(((cy + 90.0) / 180.0 * cells).astype(np.int64), 0, (1 << order) - 1)
    return hilbert_index(ix, iy, order)


def sort_run(table: pa.Table) -> pa.Table:
    """Rows in run order: spatial key, then date, then chip id (deterministic)."""
    if table.num_rows <= 1:
        return table
    key = spatial_key(table)
    date = table.column("date").combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    order = np.lexsort((date, key))
    return table.take(pa.array(order))


def years_of(table: pa.Table) -> np.ndarray:
    days = table.column("date").combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def _run_key(collection: str, year: int, gen: int) -> str:
    return f"{RUNS_DIR}/{collection_folder(collection)}/{int(year):04d}/g{gen:08d}-{uuid.uuid4().hex[:12]}.parquet"


def _encode(table: pa.Table, sink: Any, row_group_rows: int) -> None:
    pq.write_table(
        table, sink, compression="zstd", row_group_size=row_group_rows,
        write_statistics=STATS_COLUMNS, use_dictionary=DICTIONARY_COLUMNS,
    )


def _write_parquet(storage: Storage, key: str, table: pa.Table, row_group_rows: int) -> int:
    """Write a run file atomically (``Storage.staged_path`` locally, one PUT on S3); returns its size."""
    try:
        if storage.is_local:
            with storage.staged_path(key) as tmp:
                _encode(table, tmp, row_group_rows)
            return Path(storage.path(key)).stat().st_size
        sink = pa.BufferOutputStream()
        _encode(table, sink, row_group_rows)
        data = sink.getvalue().to_pybytes()
        storage.write_bytes(key, data)
        return len(data)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write the run {storage.uri(key)}: {exc}") from exc


def _date_text(days: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(days))).isoformat()


def write_run(storage: Storage, table: pa.Table, collection: str, year: int, gen: int,
              settings: CompactionSettings, source_time: float) -> Run:
    """Sort a partition's rows and write them as one run (+ its ``.items.json``)."""
    table = sort_run(table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA))
    bbox = table.column("bbox").combine_chunks()
    overall = [
        float(pc.min(bbox.field("xmin")).as_py()), float(pc.min(bbox.field("ymin")).as_py()),
        float(pc.max(bbox.field("xmax")).as_py()), float(pc.max(bbox.field("ymax")).as_py()),
    ]
    table = with_geo_metadata(table, overall)
    key = _run_key(collection, year, gen)
    days = table.column("date").combine_chunks().cast(pa.int32())
    counts = pc.value_counts(table.column("item_id").combine_chunks())
    items = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    storage.write_bytes(key[: -len(".parquet")] + ".items.json", json.dumps({"items": items}, sort_keys=True).encode())
    size = _write_parquet(storage, key, table, settings.row_group_rows)
    return Run(
        key=key, collection=collection, year=int(year), gen=gen, rows=table.num_rows, bytes=size, items=len(items),
        bbox=overall, dates=[_date_text(pc.min(days).as_py()), _date_text(pc.max(days).as_py())],
        created=time.time(), source_time=source_time,
    )


def read_run_items(storage: Storage, run: Run) -> dict[str, int]:
    """item_id -> rows of one run (its ``.items.json``)."""
    return dict(storage.read_json(run.items_key)["items"])


def _dead_items(run: Run, tombstones: dict[str, dict[str, int]]) -> list[str]:
    return [i for i, t in tombstones.get(run.collection, {}).items() if t > run.gen]


def _read_runs(storage: Storage, runs: list[Run], tombstones: dict[str, dict[str, int]]) -> pa.Table:
    """The live rows of some runs (tombstoned rows dropped)."""
    tables = []
    for run in runs:
        try:
            table = pq.read_table(storage.path(run.key), filesystem=storage.fs, schema=INDEX_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot read the run {storage.uri(run.key)}: {exc}") from exc
        dead = _dead_items(run, tombstones)
        if dead:
            table = table.filter(pc.invert(pc.is_in(table.column("item_id"), value_set=pa.array(dead, pa.string()))))
        tables.append(table.replace_schema_metadata(None))
    return pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()


def _existing(storage: Storage, keys: list[str]) -> list[str]:
    if not keys:
        return []
    try:
        infos = storage.fs.get_file_info([storage.path(k) for k in keys])
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot stat the per-item files of the combined index: {exc}") from exc
    return [k for k, info in zip(keys, infos) if info.type == pafs.FileType.File]


def _read_files(storage: Storage, keys: list[str]) -> pa.Table:
    try:
        dataset = pads.dataset([storage.path(k) for k in keys], schema=INDEX_SCHEMA, format="parquet", filesystem=storage.fs)
        return dataset.to_table().replace_schema_metadata(None)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read per-item files of the combined index: {exc}") from exc


def _list_run_files(storage: Storage) -> list[FileEntry]:
    """Every run file under ``_lsm/runs/`` (``Storage.list_files`` hides the whole ``_lsm`` folder,
    as it hides every ``_`` or ``.`` name); temporaries (``.name.*.tmp``) are skipped."""
    selector = pafs.FileSelector(storage.path(RUNS_DIR), recursive=True, allow_not_found=True)
    try:
        infos = storage.fs.get_file_info(selector)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list the runs under {storage.uri(RUNS_DIR)}: {exc}") from exc
    prefix = storage.path(RUNS_DIR).rstrip("/") + "/"
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet") or not info.path.startswith(prefix):
            continue
        relative = info.path[len(prefix):]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        out.append(FileEntry(key=f"{RUNS_DIR}/{relative}", size=int(info.size or 0), mtime=mtime))
    return out
