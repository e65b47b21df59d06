"""PyTorch map-style datasets over a chip index or over written training shards (extra: ``torch``).

    from torch.utils.data import DataLoader
    from stacchip_assets.training.torch import ChipIndexDataset, ShardDataset

    ds = ChipIndexDataset(combined_index, config)     # reads chips from the COGs on demand
    ds = ShardDataset("out/training-set")             # reads the shards write_training_set wrote
    for batch in DataLoader(ds, batch_size=32, num_workers=4): ...

Both yield the same sample for the same chip::

    {"pixels": float32 (C, H, W), "nodata_mask": bool (H, W),
     "lat_norm", "lon_norm", "week_norm", "hour_norm": float32 (2,),   # (sin, cos), see training/metadata.py
     "chipid": str, "collection": str, "index": int}

``nodata_mask`` is True where any channel equals its asset's nodata value (or is NaN). Channel
counts differ between collections: give one collection per dataset (or a batch sampler that groups
by ``collection``) so that the default collate can stack pixels.

Processes: nothing that holds a file handle is created before the first ``__getitem__`` of a
process. Each DataLoader worker opens its own Chippers (one per item, a few kept open, LRU) or its
own shard readers; the cache is keyed by process id and dropped on pickling, so rasterio handles
are never shared across processes (fork or spawn).

torch is imported when a sample is built, so this module imports without it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stacchip_assets.index.chipper import Chipper
from stacchip_assets.index.reader import load_item
from stacchip_assets.training.config import NORM_KEYS, TrainingSetConfig
from stacchip_assets.training.extract import chip_indexer, collection_layouts
from stacchip_assets.training.layout import CollectionLayout
from stacchip_assets.training.metadata import chip_norms
from stacchip_assets.training.plan import plan_training_set
from stacchip_assets.training.selection import select_chips
from stacchip_assets.training.tables import as_table, string_column
from stacchip_assets.training.training_set import read_manifest, read_training_set_info

__all__ = ["ChipIndexDataset", "ShardDataset", "nodata_mask"]


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError("stacchip_assets.training.torch needs PyTorch: pip install 'stacchip-assets[torch]'") from exc
    return torch


def nodata_mask(pixels: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where any channel of ``pixels`` (C, H, W) equals its nodata value or is NaN."""
    mask = np.isnan(pixels).any(axis=0)
    for c, value in enumerate(nodata.tolist()):
        if not np.isnan(value):
            mask |= pixels[c] == value
    return mask


def _sample(pixels: np.ndarray, norms: dict[str, np.ndarray], nodata: np.ndarray, chipid: str,
            collection: str, index: int) -> dict[str, Any]:
    torch = _torch()
    out: dict[str, Any] = {
        "pixels": torch.from_numpy(np.array(pixels, dtype=np.float32, copy=True)),  # never a view of a cache
        "nodata_mask": torch.from_numpy(nodata_mask(pixels, nodata)),
    }
    for key in NORM_KEYS:
        out[key] = torch.from_numpy(np.array(norms[key], dtype=np.float32))
    out.update(chipid=chipid, collection=collection, index=int(index))
    return out


def _close_chipper(chipper: Chipper) -> None:
    chipper.close()


class _PerProcessLRU:
    """A small LRU of open objects, private to the process that filled it (never pickled)."""

    def __init__(self, size: int, close: Callable[[Any], None] | None = None) -> None:
        self.size = max(1, int(size))
        self._close = close
        self._pid = os.getpid()
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if self._pid != os.getpid():  # inherited through fork: never touch the parent's handles
            self._items = OrderedDict()
            self._pid = os.getpid()
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            return value
        value = self._items[key] = make()
        while len(self._items) > self.size:
            _, old = self._items.popitem(last=False)
            if self._close is not None:
                self._close(old)
        return value

    def clear(self) -> None:
        if self._pid == os.getpid() and self._close is not None:
            for value in self._items.values():
                self._close(value)
        self._items = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "_close": self._close, "_pid": None, "_items": OrderedDict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


class ChipIndexDataset:
    """Samples read on demand from the COGs, over ``select_chips(index_table, config)``.

    Rows are in training order, so ``dataset[i]`` is the chip that ``write_training_set`` puts at
    manifest row ``i``. ``select=False`` takes ``index_table`` as an already selected table.
    ``max_open_items``: Chippers (items with open datasets) kept per process.
    """

    def __init__(self, index_table: Any, config: TrainingSetConfig, *, select: bool = True,
                 mountpath: str | None = None, max_open_items: int = 4) -> None:
        table = select_chips(index_table, config) if select else as_table(index_table)
        plan = plan_training_set(table, config)  # training order, uniform chip size per collection
        self.config = config
        self.mountpath = mountpath
        self.chipids = string_column(plan, "chipid")
        self.collections = string_column(plan, "collection")
        self.item_hrefs = string_column(plan, "item_href")
        self.xs = plan.column("chip_index_x").to_numpy().astype(np.int64)
        self.ys = plan.column("chip_index_y").to_numpy().astype(np.int64)
        self.index = plan.column("index").to_numpy()
        self.norms = chip_norms(plan, legacy_latlon_swap=config.legacy_latlon_swap)
        # Opens (and closes) the first item of each collection here, to fix the channel layout.
        self.layouts: dict[str, CollectionLayout] = collection_layouts(plan, config, mountpath=mountpath) if plan.num_rows else {}
        self._nodata = {c: layout.nodata_values() for c, layout in self.layouts.items()}
        self._chippers = _PerProcessLRU(max_open_items, close=_close_chipper)

    def __len__(self) -> int:
        return len(self.chipids)

    def _chipper(self, href: str, layout: CollectionLayout) -> Chipper:
        def make() -> Chipper:
            item = load_item(href)
            return Chipper(chip_indexer(item, layout.chip_size, layout.chip_stride), mountpath=self.mountpath,
                           assets=layout.assets)

        return self._chippers.get(href, make)

    def read_pixels(self, i: int) -> np.ndarray:
        """float32 (C, H, W) pixels of sample ``i``, channels in the configured order."""
        collection = self.collections[i]
        layout = self.layouts[collection]
        chipper = self._chipper(self.item_hrefs[i], layout)
        chip = chipper.chips([self.xs[i]], [self.ys[i]])
        out = np.empty((layout.num_channels, layout.chip_size, layout.chip_size), dtype=np.float32)
        for asset, c0, n in layout.asset_channels():
            out[c0 : c0 + n] = chip[asset][0]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        collection = self.collections[i]
        return _sample(self.read_pixels(i), {k: v[i] for k, v in self.norms.items()}, self._nodata[collection],
                       str(self.chipids[i]), str(collection), int(self.index[i]))

    def close(self) -> None:
        self._chippers.clear()


class ShardDataset:
    """Samples of a training set written by ``write_training_set`` (npz or Zarr), in manifest order.

    npz shards are read whole (and ``cache_shards`` of them kept per process): iterate in order or
    with a sampler that stays within a shard for a while. Zarr reads one chip (one inner chunk).
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_shards: int = 2) -> None:
        self.path = Path(path)
        self.info = read_training_set_info(self.path)
        self.format = self.info["format"]
        manifest: pa.Table = read_manifest(self.path)
        self.manifest = manifest
        self.chipids = string_column(manifest, "chipid")
        self.collections = string_column(manifest, "collection")
        self.paths = string_column(manifest, "path")
        self.shard = manifest.column("shard").to_numpy()
        self.position = manifest.column("position").to_numpy()
        self.index = manifest.column("index").to_numpy()
        self.layouts = {c: CollectionLayout.from_dict(v["layout"]) for c, v in self.info["collections"].items()}
        self._nodata = {c: layout.nodata_values() for c, layout in self.layouts.items()}
        self._open = _PerProcessLRU(cache_shards)

    def __len__(self) -> int:
        return len(self.chipids)

    def _npz(self, rel: str) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            with np.load(self.path / rel, allow_pickle=False) as data:
                return {k: data[k] for k in ("pixels", *NORM_KEYS)}

        return self._open.get(rel, make)

    def _zarr(self, rel: str) -> Any:
        def make() -> Any:
            import zarr

            return zarr.open_group(str(self.path / rel), mode="r")

        return self._open.get(rel, make)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        rel = str(self.paths[i])
        if self.format == "npz":
            arrays = self._npz(rel)
            pos = int(self.position[i])
            pixels = arrays["pixels"][pos]
            norms = {k: arrays[k][pos] for k in NORM_KEYS}
        else:
            group = self._zarr(rel)
            idx = int(self.index[i])
            pixels = group["pixels"][idx]
            norms = {k: group[k][idx] for k in NORM_KEYS}
        collection = str(self.collections[i])
        return _sample(pixels, norms, self._nodata[collection], str(self.chipids[i]), collection, int(self.index[i]))
