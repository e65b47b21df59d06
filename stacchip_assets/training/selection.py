"""Which chips go into a training set, and in which order: filters, seeded sampling, training order."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacchip_assets.training.config import REQUIRED_COLUMNS, TrainingSetConfig
from stacchip_assets.training.metadata import timestamps_micros
from stacchip_assets.training.tables import as_table, require_columns, string_column

log = logging.getLogger(__name__)

__all__ = ["select_chips", "training_order"]


def _bbox_mask(table: pa.Table, bbox: Sequence[float]) -> pa.ChunkedArray | np.ndarray:
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
    collections = string_column(table, "collection")
    rank = _item_rank(collections, string_column(table, "item_id"), seed)
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
    table = as_table(index_table)
    require_columns(table, REQUIRED_COLUMNS, "the index")
    table = _drop_repeats(_canonical(table.filter(pc.fill_null(_filter_mask(table, config), False))))
    if config.sample_size is not None and table.num_rows:
        table = table.take(pa.array(_sample(table, config, config.sample_size), pa.int64()))
    return training_order(table, config.seed)


def _filter_mask(table: pa.Table, config: TrainingSetConfig) -> pa.ChunkedArray:
    """The rows that pass the config's filters (collections, cloud, nodata, chip size, dates, bbox)."""
    mask = pc.is_in(table.column("collection"), value_set=pa.array(list(config.collections or ()), pa.string()))
    if config.max_cloud is not None:
        mask = pc.and_(mask, pc.less_equal(table.column("cloud_cover_percentage"), float(config.max_cloud)))
    if config.max_nodata is not None:
        mask = pc.and_(mask, pc.less_equal(table.column("nodata_percentage"), float(config.max_nodata)))
    if config.chip_size is not None:
        mask = pc.and_(mask, pc.equal(table.column("chip_size"), int(config.chip_size)))
    start, end = config.start_micros, config.end_micros
    if start is not None or end is not None:
        micros = pa.chunked_array([pa.array(timestamps_micros(table), pa.int64())])
        if start is not None:
            mask = pc.and_(mask, pc.greater_equal(micros, start))
        if end is not None:
            mask = pc.and_(mask, pc.less_equal(micros, end))
    if config.bbox is not None:
        mask = pc.and_(mask, pa.array(_bbox_mask(table, config.bbox)))
    return mask


def _drop_repeats(table: pa.Table) -> pa.Table:
    """Repeated rows (the same chip combined twice) of a canonical table dropped; sampling decides about repeats."""
    if table.num_rows > 1:
        coll, chipid = string_column(table, "collection"), string_column(table, "chipid")
        repeat = np.zeros(table.num_rows, dtype=bool)
        repeat[1:] = (coll[1:] == coll[:-1]) & (chipid[1:] == chipid[:-1])
        if repeat.any():
            log.warning("dropping %d repeated (collection, chipid) rows from the index", int(repeat.sum()))
            table = table.filter(pa.array(~repeat))
    return table


def _draw(n: int, size: int, rng: np.random.Generator, replace: bool, what: str) -> np.ndarray:
    if not replace and size > n:
        log.warning("%s: asked for %d chips without duplicates, only %d match: taking all", what, size, n)
        size = n
    if n == 0 or size == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=replace))


def _sample(table: pa.Table, config: TrainingSetConfig, sample_size: int | Mapping[str, int]) -> np.ndarray:
    """Sorted row positions drawn from ``table``: ``sample_size`` (the config's, not None) over all
    rows, or per collection."""
    replace = bool(config.allow_duplicates)
    if not isinstance(sample_size, Mapping):
        rng = np.random.default_rng(int(config.seed))
        return _draw(table.num_rows, int(sample_size), rng, replace, "sample")
    coll = string_column(table, "collection")
    picked = []
    for collection in sorted(set(coll.tolist())):
        rows = np.flatnonzero(coll == collection)
        size = sample_size.get(collection)
        if size is None:
            picked.append(rows)
            continue
        rng = np.random.default_rng([int(config.seed), zlib.crc32(collection.encode())])
        picked.append(rows[_draw(len(rows), size, rng, replace, collection)])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)
