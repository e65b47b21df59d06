"""A true-colour gallery of a few chips of an indexed item, read with the library's Chipper.

Which chips: the kept chips sorted by cloud fraction (then y, x), `count` of them evenly spaced over
that order, so the gallery runs from the clearest to the cloudiest chip.

Which bands: red, green and blue by their ``eo:bands`` common names (three single-band assets, or
one multi-band asset such as NAIP's ``image``); a sensor without all three (SAR, MODIS without
common names) shows its first raster data asset that is not the indexer's mask, in grey.

Scaling (documented, so a test can recompute it): per channel, over the pixels of all the
gallery's chips that are not the asset's nodata value (and are finite), ``lo`` and ``hi`` are the
2nd and 98th percentiles (``hi = lo + 1`` when they are equal); a value becomes
``clip(rint((v - lo) / (hi - lo) * 255), 0, 255)`` as uint8, nodata becomes 0. A chip of
``chip_size`` pixels is shown as every ``step``-th pixel, ``step = ceil(chip_size / max_tile)``,
starting at pixel 0 (no resampling). Tiles are laid out left to right with a gap of ``GAP`` pixels
and a caption strip of ``CAPTION_HEIGHT`` pixels under each (``x,y`` and the cloud fraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from stacchip_assets.core.stac import raster_asset_keys
from stacchip_assets.index.chip_indexer import ChipIndexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.index.pictures import BACKGROUND, TEXT, font, png_bytes

GAP = 4
CAPTION_HEIGHT = 16
PERCENTILES = (2.0, 98.0)


@dataclass
class Gallery:
    """A gallery PNG and what is in it (tile `i` is at ``origins[i]``, `tile` pixels square)."""

    png: bytes
    xs: np.ndarray
    ys: np.ndarray
    cloud: np.ndarray
    bands: list[tuple[str, int]]
    mode: str  # "rgb" or "grey"
    step: int
    tile: int
    origins: list[tuple[int, int]] = field(default_factory=list)
    stretch: list[tuple[float, float]] = field(default_factory=list)

    @property
    def description(self) -> str:
        names = ", ".join(f"{key}[{band}]" for key, band in self.bands)
        return (f"{len(self.xs)} chips, {'true colour' if self.mode == 'rgb' else 'grey'} from {names}, "
                f"one pixel in {self.step} per axis, 2-98 % stretch per channel")


def _band_names(asset) -> list[str | None]:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    return [b.get("common_name") if isinstance(b, dict) else None for b in bands]


def display_bands(indexer: ChipIndexer) -> tuple[list[tuple[str, int]], str]:
    """(asset key, band index) of red, green, blue, mode "rgb"; else the first non-mask raster
    data asset's band 0, mode "grey"."""
    item = indexer.item
    keys = raster_asset_keys(item)
    found: dict[str, tuple[str, int]] = {}
    for key in keys:
        for i, name in enumerate(_band_names(item.assets[key])):
            if name in ("red", "green", "blue") and name not in found:
                found[name] = (key, i)
    if len(found) == 3:
        return [found["red"], found["green"], found["blue"]], "rgb"
    masks = set(getattr(indexer, "mask_asset_keys", ()))
    plain = [k for k in keys if k not in masks] or keys
    if not plain:
        raise ValueError(f"item {item.id} has no raster data asset to show")
    return [(plain[0], 0)], "grey"


def pick_chips(table: pa.Table, count: int) -> np.ndarray:
    """Row indices of `count` kept chips evenly spaced from the clearest to the cloudiest."""
    n = table.num_rows
    if n == 0 or count <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((table.column("chip_index_x").to_numpy(), table.column("chip_index_y").to_numpy(),
                        table.column("cloud_cover_percentage").to_numpy()))
    return order[np.unique(np.rint(np.linspace(0, n - 1, min(count, n))).astype(np.int64))]


def stretch(values: np.ndarray, nodata: float | None) -> tuple[np.ndarray, float, float]:
    """uint8 of `values` (any shape) by the documented 2-98 % stretch; nodata -> 0."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values)
    if nodata is not None and math.isfinite(nodata):
        valid &= values != nodata
    if not valid.any():
        return np.zeros(values.shape, np.uint8), 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values[valid], PERCENTILES))
    hi = hi if hi > lo else lo + 1.0
    out = np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255)
    return np.where(valid, out, 0).astype(np.uint8), lo, hi


def render_gallery(indexer: ChipIndexer, table: pa.Table, count: int = 4, max_tile: int = 96) -> Gallery | None:
    """The gallery of `count` chips of the item (None when the index has no rows).

    Pixels come from `Chipper(indexer)` (the item's COGs, under the indexer's href policy)."""
    rows = pick_chips(table, count)
    if rows.size == 0:
        return None
    xs = table.column("chip_index_x").to_numpy().astype(np.int64)[rows]
    ys = table.column("chip_index_y").to_numpy().astype(np.int64)[rows]
    cloud = table.column("cloud_cover_percentage").to_numpy()[rows]
    bands, mode = display_bands(indexer)
    step = max(1, math.ceil(indexer.chip_size / max_tile))
    with Chipper(indexer, assets=sorted({key for key, _ in bands})) as chipper:
        pixels = chipper.chips(xs, ys)
        nodata = {key: chipper.reader(key).dataset.nodata for key, _ in bands}
    channels, ranges = [], []
    for key, band in bands:
        scaled, lo, hi = stretch(pixels[key][:, band, ::step, ::step], nodata[key])
        channels.append(scaled)
        ranges.append((lo, hi))
    rgb = np.stack(channels * (3 if mode == "grey" else 1), axis=-1)  # (n, tile, tile, 3)
    tile = rgb.shape[1]
    width = len(rows) * tile + (len(rows) + 1) * GAP
    image = Image.new("RGB", (width, tile + 2 * GAP + CAPTION_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fnt = font(10)
    origins = []
    for i in range(len(rows)):
        left = GAP + i * (tile + GAP)
        origins.append((left, GAP))
        image.paste(Image.fromarray(rgb[i], "RGB"), (left, GAP))
        draw.text((left + 1, GAP + tile + 2), f"{xs[i]},{ys[i]}  cloud {cloud[i]:.0%}", fill=TEXT, font=fnt)
    return Gallery(png=png_bytes(image), xs=xs, ys=ys, cloud=cloud, bands=bands, mode=mode, step=step,
                   tile=tile, origins=origins, stretch=ranges)
