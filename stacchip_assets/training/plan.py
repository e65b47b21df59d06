"""The plan of a training set (which chip goes to which shard and position) and its split into tasks.

The plan is decided on the driver before anything is read: per collection, sample ``index`` ``i``
goes to shard ``i // shard_size`` at position ``i % shard_size``. Tasks are runs of consecutive
chips of one collection (whole shards when writing), so a task's output does not depend on which
worker runs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from stacchip_assets.errors import StacchipError
from stacchip_assets.training.config import REQUIRED_COLUMNS, TrainingSetConfig
from stacchip_assets.training.metadata import chip_centres, timestamps_micros
from stacchip_assets.training.selection import training_order
from stacchip_assets.training.tables import as_table, require_columns, string_column

__all__ = ["ChipTask", "make_tasks", "plan_training_set"]


def plan_training_set(selection: pa.Table, config: TrainingSetConfig) -> pa.Table:
    """The manifest: which chip goes to which shard and position (decided before any read).

    Rows are in training order (see :func:`training_order`); per collection, sample ``index`` ``i``
    goes to shard ``i // shard_size`` at position ``i % shard_size``.
    """
    table = as_table(selection)
    require_columns(table, REQUIRED_COLUMNS, "the selection")
    unknown = sorted(set(string_column(table, "collection").tolist()) - set(config.bands))
    if unknown:
        raise StacchipError(f"the selection holds collections without configured bands: {unknown}")
    table = training_order(table, config.seed)
    n = table.num_rows
    coll = string_column(table, "collection")
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
    micros = timestamps_micros(table)
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
    coll = string_column(plan, "collection")
    hrefs = string_column(plan, "item_href")
    xs = plan.column("chip_index_x").to_numpy().astype(np.int64)
    ys = plan.column("chip_index_y").to_numpy().astype(np.int64)
    index = plan.column("index").to_numpy() if "index" in plan.column_names else None
    tasks: list[ChipTask] = []
    for collection in dict.fromkeys(coll.tolist()):
        rows = np.flatnonzero(coll == collection)
        bounds = _task_bounds(hrefs[rows], config.shard_size, chips_per_task, whole_shards)
        for a, b in zip(bounds[:-1], bounds[1:]):
            sel = rows[a:b]
            tasks.append(ChipTask(
                collection=collection,
                first_index=int(index[sel[0]]) if index is not None else int(a),
                item_href=hrefs[sel], xs=xs[sel], ys=ys[sel],
                norms={k: v[sel] for k, v in (norms or {}).items()},
            ))
    return tasks


def _task_bounds(hrefs: np.ndarray, shard_size: int, chips_per_task: int, whole_shards: bool) -> list[int]:
    """Where a collection's rows are cut into tasks: on shard boundaries, or on item boundaries."""
    n = len(hrefs)
    if whole_shards:
        per = max(1, int(math.ceil(max(chips_per_task, 1) / shard_size))) * shard_size
        return list(range(0, n, per)) + [n]
    item_change = np.flatnonzero(hrefs[1:] != hrefs[:-1]) + 1
    bounds, count = [0], 0
    starts = np.concatenate([[0], item_change, [n]])
    for a, b in zip(starts[:-1], starts[1:]):
        count += b - a
        if count >= chips_per_task:
            bounds.append(int(b))
            count = 0
    if bounds[-1] != n:
        bounds.append(n)
    return bounds
