"""The channel layout of a collection's samples: which band of which asset is channel ``c``, and its chip geometry."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stacchip_assets.errors import StacchipError
from stacchip_assets.index.chipper import Chipper

__all__ = ["ChannelSpec", "CollectionLayout", "check_layout", "layout_from_chipper"]


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
    def from_dict(cls, d: Mapping[str, Any]) -> CollectionLayout:
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


def check_layout(layout: CollectionLayout, chipper: Chipper) -> None:
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
