"""Whole-item extraction: one item JSON load and one Chipper per item, chips read in grid order.

Chips are grouped by item: the item JSON is loaded once per item (per task), each asset is opened once
(one :class:`~stacchip_assets.index.chipper.Chipper` per item), and chips are read in grid order, a band
of chip rows per call, so each COG block is decoded once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacchip_assets.errors import StacchipError
from stacchip_assets.index.chip_indexer import NoStatsChipIndexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.index.reader import (
    load_item,  # the stored item JSON (local, http(s) or s3://), shared with read_chip
)
from stacchip_assets.io.local_files import HrefPolicy, default_read_policy
from stacchip_assets.training.config import TrainingSetConfig
from stacchip_assets.training.layout import CollectionLayout, check_layout, layout_from_chipper
from stacchip_assets.training.plan import ChipTask
from stacchip_assets.training.tables import string_column

__all__ = ["batch_rows", "chip_indexer", "collection_layouts", "iter_item_chips", "iter_task_pixels"]


def chip_indexer(item: Any, chip_size: int, stride: int, href_policy: HrefPolicy | None = None) -> NoStatsChipIndexer:
    """The indexer that puts a stored item's chips back on the grid the index was built on (no statistics)."""
    # pad_edges only adds partial chips at the right/bottom edges: every indexed position keeps its
    # offsets, and positions indexed with padding stay inside the grid. The stored item JSON is
    # untrusted: its hrefs pass `href_policy` (default: hrefs.default_read_policy()) before GDAL sees them.
    return NoStatsChipIndexer(item, chip_size=int(chip_size), stride=None if stride == chip_size else int(stride), pad_edges=True,
                              href_policy=href_policy if href_policy is not None else default_read_policy())


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
    for collection in dict.fromkeys(string_column(plan, "collection").tolist()):
        rows = plan.filter(pc.equal(plan.column("collection"), collection))
        chip_size = _uniform(rows, "chip_size", collection)
        stride = _uniform(rows, "chip_stride", collection) if "chip_stride" in rows.column_names else chip_size
        href = rows.column("item_href")[0].as_py()
        if not href:
            raise StacchipError(f"chip {rows.column('chipid')[0].as_py()!r} has no item_href")
        with Chipper(chip_indexer(load_item(href), chip_size, stride, href_policy), mountpath=mountpath,
                     assets=list(config.bands[collection])) as chipper:
            layouts[collection] = layout_from_chipper(collection, chipper, config.bands[collection])
    return layouts


def batch_rows(chipper: Chipper, assets: Sequence[str]) -> int:
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
    rows = rows_per_batch or batch_rows(chipper, chipper.asset_keys)
    order = np.lexsort((xs, ys))
    # Batches: chips whose row falls in the same band of `rows` chip rows (aligned on the grid).
    band = ys[order] // rows
    cuts = np.flatnonzero(np.diff(band)) + 1
    for positions in np.split(order, cuts):
        yield positions, chipper.chips(xs[positions], ys[positions])


def iter_task_pixels(task: ChipTask, layout: CollectionLayout, *, mountpath: str | None = None,
                     href_policy: HrefPolicy | None = None) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], Chipper]]:
    """Pixels of a task's chips: ``(task rows, {asset: native array}, chipper)``, item by item.

    One item JSON load and one Chipper (datasets opened once) per item of the task.
    """
    for href, rows in task.item_groups():
        item = load_item(href)
        with Chipper(chip_indexer(item, layout.chip_size, layout.chip_stride, href_policy), mountpath=mountpath,
                     assets=layout.assets) as chipper:
            check_layout(layout, chipper)
            for positions, pixels in iter_item_chips(chipper, task.xs[rows], task.ys[rows]):
                yield rows[positions], pixels, chipper
