"""A quicklook PNG of an item's chip grid: kept chips coloured by cloud cover, dropped chips grey.

Drawn with Pillow in plain lon/lat (longitudes scaled by cos(latitude) so shapes look right), with
the item footprint outlined and a colour bar for cloud cover 0..1 at the bottom.
"""

from __future__ import annotations

import io
import math

import numpy as np
import shapely
from PIL import Image, ImageDraw

#: viridis-like stops for cloud fraction 0 (clear) .. 1 (overcast)
_STOPS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
BACKGROUND = (255, 255, 255)
DROPPED = (170, 170, 170)
OUTLINE = (0, 0, 0)
DEFAULT_SIZE = (320, 320)
COLORBAR_HEIGHT = 10


def cloud_colour(value: float) -> tuple[int, int, int]:
    """Colour of a cloud fraction in [0, 1]."""
    v = min(max(float(value), 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(v), len(_STOPS) - 2)
    c = _STOPS[i] + (_STOPS[i + 1] - _STOPS[i]) * (v - i)
    return tuple(int(round(x)) for x in c)


def _rings(geom) -> list[np.ndarray]:
    if geom is None or geom.is_empty:
        return []
    parts = getattr(geom, "geoms", [geom])
    return [np.asarray(p.exterior.coords) for p in parts if hasattr(p, "exterior")]


def render_quicklook(
    kept: np.ndarray,
    cloud: np.ndarray,
    dropped: np.ndarray | None = None,
    footprint=None,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> bytes:
    """PNG bytes: `kept` chip polygons filled by `cloud` fraction, `dropped` ones grey, the item
    `footprint` (a shapely geometry in lon/lat) outlined. Always `size` pixels (width, height)."""
    width, height = size
    plot_h = height - COLORBAR_HEIGHT - 4
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
    # colour bar: cloud 0 (left) .. 1 (right)
    top = height - COLORBAR_HEIGHT - 1
    for x in range(width):
        draw.line([(x, top), (x, height - 1)], fill=cloud_colour(x / max(width - 1, 1)))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
