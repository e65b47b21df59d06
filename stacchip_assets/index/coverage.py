"""A coverage map of a chip index table (the combined index): chip footprints per collection.

One panel per collection (collections are often continents apart: one world-wide frame would make
every chip a dot), each zoomed to its collection's chips, in plain lon/lat with longitudes scaled by
cos(latitude), a lon/lat graticule with degree labels and no basemap. Footprints are filled by
cloud fraction (the colour bar at the bottom, labelled) and outlined. A panel draws at most
`max_footprints` chips (every k-th row of the collection beyond that); :class:`CoverageMap` says how
many it drew of how many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from PIL import Image, ImageDraw

from stacchip_assets.index.pictures import BACKGROUND, TEXT, cloud_colours, draw_colorbar, font, png_bytes

PANEL = (300, 260)
TITLE_HEIGHT = 18
COLORBAR_BAND = 48
MARGIN = 34  # room for the graticule labels
GRID = (205, 205, 205)
OUTLINE = (30, 30, 30)
#: graticule spacings in degrees; the largest giving at least 2 spacings across the wider axis is used
STEPS = (90, 45, 30, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


@dataclass
class Panel:
    collection: str
    chips: int
    drawn: int
    items: int
    box: tuple[int, int, int, int]  # plot area (x0, y0, x1, y1) in the image
    bounds: tuple[float, float, float, float]  # lon/lat bounds shown


@dataclass
class CoverageMap:
    png: bytes
    panels: list[Panel]

    @property
    def drawn(self) -> int:
        return sum(p.drawn for p in self.panels)


def graticule_step(span: float) -> float:
    """Degrees between graticule lines for a span of `span` degrees (2 to 5 spacings)."""
    return next((s for s in STEPS if span / s >= 2), STEPS[-1])


def _deg(value: float, axis: str, step: float) -> str:
    hemi = ("E" if value >= 0 else "W") if axis == "x" else ("N" if value >= 0 else "S")
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{abs(value):.{decimals}f}°{hemi}"


def _graticule(draw: ImageDraw.ImageDraw, box, bounds, to_px) -> None:
    x0, y0, x1, y1 = box
    xmin, ymin, xmax, ymax = bounds
    fnt = font(10)
    step = graticule_step(max(xmax - xmin, ymax - ymin))
    for lon in np.arange(math.ceil(xmin / step) * step, xmax + 1e-12, step):
        px, _ = to_px(np.array([[lon, ymin]]))[0]
        draw.line([(px, y0), (px, y1)], fill=GRID)
        label = _deg(lon, "x", step)
        draw.text((px - draw.textlength(label, font=fnt) / 2, y1 + 2), label, fill=TEXT, font=fnt)
    for lat in np.arange(math.ceil(ymin / step) * step, ymax + 1e-12, step):
        _, py = to_px(np.array([[xmin, lat]]))[0]
        draw.line([(x0, py), (x1, py)], fill=GRID)
        label = _deg(lat, "y", step)
        draw.text((max(x0 - 2 - draw.textlength(label, font=fnt), 0), py - 6), label, fill=TEXT, font=fnt)
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], collection: str, table: pa.Table,
           max_footprints: int) -> Panel:
    """Draw one collection's chips in the panel at `origin`."""
    n = table.num_rows
    step = max(1, math.ceil(n / max_footprints))
    rows = np.arange(0, n, step)
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)[rows])
    cloud = table.column("cloud_cover_percentage").to_numpy()[rows]
    items = len(pc.unique(table.column("item_id"))) if n else 0
    ox, oy = origin
    box = (ox + MARGIN + 16, oy + TITLE_HEIGHT + 4, ox + PANEL[0] - 10, oy + PANEL[1] - 18)
    fnt = font(12)
    draw.text((ox + 8, oy + 2), f"{collection}: {n} chips, {items} items", fill=TEXT, font=fnt)
    xmin, ymin, xmax, ymax = (float(v) for v in shapely.total_bounds(polygons))
    pad = 0.05 * max(xmax - xmin, ymax - ymin, 1e-6)
    bounds = (xmin - pad, ymin - pad, xmax + pad, ymax + pad)
    kx = math.cos(math.radians((bounds[1] + bounds[3]) / 2)) or 1e-6
    span_x, span_y = (bounds[2] - bounds[0]) * kx, bounds[3] - bounds[1]
    scale = min((box[2] - box[0]) / span_x, (box[3] - box[1]) / span_y)
    off_x = box[0] + ((box[2] - box[0]) - span_x * scale) / 2
    off_y = box[1] + ((box[3] - box[1]) - span_y * scale) / 2

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([off_x + (xy[:, 0] - bounds[0]) * kx * scale, off_y + (bounds[3] - xy[:, 1]) * scale])

    plot = (int(off_x), int(off_y), int(math.ceil(off_x + span_x * scale)), int(math.ceil(off_y + span_y * scale)))
    _graticule(draw, plot, bounds, to_px)
    rings = shapely.get_exterior_ring(shapely.get_geometry(polygons, 0))
    coords, index = shapely.get_coordinates(rings, return_index=True)
    pixels = to_px(coords)
    splits = np.flatnonzero(np.diff(index)) + 1
    fills = cloud_colours(cloud).tolist()
    for ring, fill in zip(np.split(pixels, splits), fills):
        draw.polygon([tuple(p) for p in ring.tolist()], fill=tuple(fill), outline=OUTLINE)
    return Panel(collection, n, len(rows), items, plot, bounds)


def render_coverage(table: pa.Table, max_footprints: int = 20_000, columns: int = 3) -> CoverageMap | None:
    """The coverage map of a chip index table (None when it has no rows)."""
    if table.num_rows == 0:
        return None
    collections = sorted(pc.unique(table.column("collection")).to_pylist())
    ncols = min(columns, len(collections))
    nrows = math.ceil(len(collections) / ncols)
    width, height = ncols * PANEL[0], nrows * PANEL[1] + COLORBAR_BAND
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    panels = []
    for i, collection in enumerate(collections):
        sub = table.filter(pc.equal(table.column("collection"), collection))
        origin = ((i % ncols) * PANEL[0], (i // ncols) * PANEL[1])
        panels.append(_panel(draw, origin, collection, sub, max_footprints))
    bar_width = min(width - 20, 360)
    left = (width - bar_width) // 2
    draw_colorbar(draw, (left, nrows * PANEL[1] + 4, left + bar_width, height))
    return CoverageMap(png_bytes(image), panels)
