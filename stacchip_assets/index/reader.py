"""Chip pixels back from an index row or a chip id, with no other input.

A row of any chip index (per-item or combined) records where the stored item JSON is (`item_href`),
the chip position and the grid settings (`chip_size`, `chip_stride`). That is enough to rebuild the
chip grid and read the chip's window from the item's COG assets::

    from stacchip_assets.index.reader import read_chip, read_chip_by_id
    pixels = read_chip(row)                      # row: dict, pandas/geopandas row, 1-row pyarrow table
    pixels = read_chip_by_id("S2B_31UDQ_20230704_0_L2A-1-2")   # looked up in the combined index
    # -> {asset_key: ndarray (bands, chip_size, chip_size)}

The stored item JSON is untrusted input (anyone who can write the storage base can edit it), so the
asset hrefs it names go through an href policy before GDAL sees them (`href_policy=`). The default,
:func:`stacchip_assets.io.local_files.default_read_policy`, allows http, https and s3 URLs, files inside the
embedded sample catalog's folder and, elsewhere, only local files that really are TIFF/JPEG 2000
rasters (first bytes checked); ``file://``, ``/vsi...`` paths, driver prefixes and any other local
file (``/etc/passwd``) are refused with HrefPolicyError; what GDAL opens is decided on the opened
file itself (:func:`stacchip_assets.io.raster.open_asset`: TIFF/JPEG 2000 content only, never VRT). A row's
`chip_size` above ``ReadLimits.max_chip_size`` (:mod:`stacchip_assets.core.limits`) is a ResourceLimitError.
The Dagster code location passes its own policy (``StacSourceResource.href_policy()``); pass ``HrefPolicy(local_roots=[...])`` to be stricter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pystac

from stacchip_assets.errors import StacchipError, StorageError
from stacchip_assets.index.chip_indexer import ChipIndexer, NoStatsChipIndexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.io.local_files import HrefPolicy, default_read_policy
from stacchip_assets.io.settings import read_limits
from stacchip_assets.io.storage import Storage

ROW_FIELDS = ("item_href", "chip_index_x", "chip_index_y", "chip_size", "chip_stride")


def row_to_dict(row: Any) -> dict[str, Any]:
    """A chip row as a plain dict: accepts a Mapping, a pandas Series, or a 1-row pyarrow Table/RecordBatch."""
    if isinstance(row, (pa.Table, pa.RecordBatch)):
        if row.num_rows != 1:
            raise StacchipError(f"expected one row, got {row.num_rows}")
        return {name: values[0] for name, values in row.to_pydict().items()}
    if hasattr(row, "to_dict") and not isinstance(row, Mapping):  # pandas Series (a geopandas row)
        return dict(row.to_dict())
    if isinstance(row, Mapping):
        return dict(row)
    raise StacchipError(f"cannot read a chip row from {type(row).__name__}")


def load_item(href: str, storage: Storage | None = None) -> pystac.Item:
    """The stored item JSON at `href` (local path, s3:// URI or http(s) URL)."""
    try:
        if href.startswith("s3://"):
            if storage is not None and href.startswith(storage.base + "/"):
                data = storage.read_bytes(href[len(storage.base) + 1:])
            else:  # credentials and endpoint from the AWS environment
                parent, name = href.rsplit("/", 1)
                data = Storage.from_uri(parent).read_bytes(name)
            item = pystac.Item.from_dict(json.loads(data))
            item.set_self_href(href)
            return item
        return pystac.Item.from_file(href)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot load the item JSON {href}: {exc}") from exc


@lru_cache(maxsize=32)
def _cached_item(href: str, mtime_ns: int) -> pystac.Item:  # mtime in the key: an edited file is reloaded
    return load_item(href)


def _item(href: str, storage: Storage | None) -> pystac.Item:
    if "://" not in href and os.path.exists(href):
        return _cached_item(href, os.stat(href).st_mtime_ns).clone()
    return load_item(href, storage)


def indexer_for_row(row: Any, *, storage: Storage | None = None, href_policy: HrefPolicy | None = None) -> ChipIndexer:
    """The chip grid a row was indexed on (no statistics are computed or read); its asset hrefs are
    checked against `href_policy` (default: :func:`stacchip_assets.io.local_files.default_read_policy`)."""
    values = row_to_dict(row)
    missing = [f for f in ROW_FIELDS if values.get(f) is None]
    if missing:
        raise StacchipError(f"the row lacks {missing}: cannot locate the chip's pixels")
    item_href = str(values["item_href"])
    shown_id = values.get("item_id") or values.get("chipid") or item_href
    # A row is untrusted too: its chip_size decides the memory of every read (65,535 px -> 16 GiB per chip).
    limits = read_limits()
    chip_size = limits.check_chip_size(values["chip_size"], item_id=str(shown_id))
    stride = replace(limits, max_chip_size=2**31 - 1).check_chip_size(values["chip_stride"], item_id=str(shown_id))
    item = _item(item_href, storage)
    # pad_edges only adds chips at the right/bottom edges; every indexed position keeps its offsets
    return NoStatsChipIndexer(item, chip_size=chip_size, stride=None if stride == chip_size else stride, pad_edges=True,
                              href_policy=href_policy if href_policy is not None else default_read_policy())


def read_chip(
    row: Any,
    *,
    assets: Sequence[str] | None = None,
    storage: Storage | None = None,
    mountpath: str | None = None,
    href_policy: HrefPolicy | None = None,
) -> dict[str, np.ndarray]:
    """Pixels of the chip a row describes: {asset_key: ndarray (bands, chip_size, chip_size)}.

    The stored item's asset hrefs must pass `href_policy` (default: see the module doc), else
    HrefPolicyError names the item, the asset and why, before GDAL opens anything."""
    values = row_to_dict(row)
    indexer = indexer_for_row(values, storage=storage, href_policy=href_policy)
    with Chipper(indexer, mountpath=mountpath, assets=assets) as chipper:
        return chipper.chip(int(values["chip_index_x"]), int(values["chip_index_y"]))


def find_row(chipid: str, index: Any = None, *, collection: str | None = None) -> dict[str, Any]:
    """The row of a chip id in an index: a pyarrow Table, a (geo)pandas DataFrame, a path/URI of an
    index file or folder, a Storage (its combined index), or None (the default storage's combined index)."""
    if index is None or isinstance(index, Storage):
        index = CombinedIndex(index if isinstance(index, Storage) else Storage()).dataset()
    if isinstance(index, (str, os.PathLike)):
        index = pads.dataset(str(index), format="parquet")
    condition = pc.field("chipid") == chipid
    if collection is not None:
        condition = condition & (pc.field("collection") == collection)
    if isinstance(index, pads.Dataset):
        table = index.to_table(filter=condition)
    elif isinstance(index, pa.Table):
        table = index.filter(condition)
    elif hasattr(index, "loc") and hasattr(index, "columns"):  # pandas / geopandas
        mask = index["chipid"] == chipid
        if collection is not None:
            mask &= index["collection"] == collection
        rows = index[mask]
        if len(rows) != 1:
            raise StacchipError(f"chip id {chipid!r} matches {len(rows)} rows" + (" (give collection=)" if len(rows) > 1 else ""))
        return row_to_dict(rows.iloc[0])
    else:
        raise StacchipError(f"cannot search chips in {type(index).__name__}")
    if table.num_rows != 1:
        raise StacchipError(f"chip id {chipid!r} matches {table.num_rows} rows" + (" (give collection=)" if table.num_rows > 1 else ""))
    return row_to_dict(table)


def read_chip_by_id(
    chipid: str,
    index: Any = None,
    *,
    collection: str | None = None,
    assets: Sequence[str] | None = None,
    storage: Storage | None = None,
    href_policy: HrefPolicy | None = None,
) -> dict[str, np.ndarray]:
    """Pixels of a chip given only its id (looked up in `index`, default: the combined index); the
    stored item's hrefs are checked as in :func:`read_chip`."""
    return read_chip(find_row(chipid, index, collection=collection), assets=assets, storage=storage,
                     href_policy=href_policy)
