"""A quicklook PNG of an item's chip grid: kept chips coloured by cloud cover, dropped chips grey.

Drawn with Pillow in plain lon/lat (longitudes scaled by cos(latitude) so shapes look right), with
the item footprint outlined, a legend (dropped chips, item footprint) and a labelled colour bar for
cloud fraction 0..1 at the bottom. Layout, top to bottom: plot, legend row, colour bar with labels.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from PIL import Image, ImageDraw

from stacchip_assets.index.pictures import BACKGROUND, TEXT, cloud_colour, draw_colorbar, font, png_bytes

__all__ = ["BACKGROUND", "COLORBAR_HEIGHT", "DEFAULT_SIZE", "DROPPED", "LEGEND_HEIGHT", "OUTLINE",
           "cloud_colour", "quicklook_layout", "render_quicklook"]

DROPPED = (170, 170, 170)
OUTLINE = (0, 0, 0)
DEFAULT_SIZE = (320, 320)
#: Height of the colour bar band (bar + tick labels) and of the legend row, in pixels.
COLORBAR_HEIGHT = 42
LEGEND_HEIGHT = 18


def quicklook_layout(size: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of the plot, the legend row and the colour bar of a quicklook of `size`."""
    width, height = size
    bar_top = height - COLORBAR_HEIGHT
    legend_top = bar_top - LEGEND_HEIGHT
    return {
        "plot": (0, 0, width, legend_top),
        "legend": (0, legend_top, width, bar_top),
        "colorbar": (8, bar_top + 2, width - 8, height),
    }


def _rings(geom) -> list[np.ndarray]:
    if geom is None or geom.is_empty:
        return []
    parts = getattr(geom, "geoms", [geom])
    return [np.asarray(p.exterior.coords) for p in parts if hasattr(p, "exterior")]


def _legend(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], dropped_label: str) -> None:
    x0, y0, _, y1 = box
    fnt = font(11)
    mid = (y0 + y1) // 2
    draw.rectangle([x0 + 8, mid - 5, x0 + 20, mid + 5], fill=DROPPED, outline=(120, 120, 120))
    draw.text((x0 + 25, mid - 7), dropped_label, fill=TEXT, font=fnt)
    lx = x0 + 25 + draw.textlength(dropped_label, font=fnt) + 14
    draw.line([(lx, mid), (lx + 14, mid)], fill=OUTLINE, width=2)
    draw.text((lx + 19, mid - 7), "item footprint", fill=TEXT, font=fnt)


def render_quicklook(
    kept: np.ndarray,
    cloud: np.ndarray,
    dropped: np.ndarray | None = None,
    footprint=None,
    size: tuple[int, int] = DEFAULT_SIZE,
    chip_max_nodata: float | None = None,
) -> bytes:
    """PNG bytes: `kept` chip polygons filled by `cloud` fraction, `dropped` ones grey, the item
    `footprint` (a shapely geometry in lon/lat) outlined. Always `size` pixels (width, height).
    `chip_max_nodata` names the drop rule in the legend."""
    width, height = size
    layout = quicklook_layout(size)
    plot_h = layout["plot"][3]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    geoms = [g for g in list(kept) + list(dropped if dropped is not None else []) if g is not None]
    if footprint is not None and not footprint.is_empty:
        geoms.append(footprint)
    if geoms:
        xmin, ymin, xmax, ymax = shapely.total_bounds(np.asarray(geoms, dtype=object))
        kx = math.cos(math.radians((ymin + ymax) / 2)) or 1e-6
        span_x = max((xmax - xmin) * kx, 1e-12)
        span_y = max(ymax - ymin, 1e-12)
        margin = 6
        scale = min((width - 2 * margin) / span_x, (plot_h - 2 * margin) / span_y)
        off_x = (width - span_x * scale) / 2
        off_y = (plot_h - span_y * scale) / 2

        def to_px(coords: np.ndarray) -> list[tuple[float, float]]:
            px = off_x + (coords[:, 0] - xmin) * kx * scale
            py = off_y + (ymax - coords[:, 1]) * scale
            return list(zip(px.tolist(), py.tolist()))

        for geom in dropped if dropped is not None else []:
            for ring in _rings(geom):
                draw.polygon(to_px(ring), fill=DROPPED, outline=(120, 120, 120))
        for geom, value in zip(kept, cloud):
            for ring in _rings(geom):
                draw.polygon(to_px(ring), fill=cloud_colour(value), outline=(40, 40, 40))
        for ring in _rings(footprint):
            draw.line(to_px(ring), fill=OUTLINE, width=2)
    rule = f" (nodata > {chip_max_nodata:.0%})" if chip_max_nodata is not None else ""
    _legend(draw, layout["legend"], f"dropped{rule}")
    draw_colorbar(draw, layout["colorbar"])
    return png_bytes(image)
