"""Drawing helpers shared by the pictures of the indexes (quicklook, gallery, coverage map).

Pillow only (no matplotlib): a cloud-fraction palette, a labelled colour bar, captions, PNG bytes,
rounded Markdown tables of distributions, and Markdown that shows an image.

Where the Dagster UI (1.13) shows a Markdown metadata value *inline* (asset page "Latest
materialization", the event metadata table of a partition, "All individual events") it renders
it only when the Markdown is shorter than 1000 characters; longer Markdown sits behind a
"[Show Markdown]" button. A PNG inlined as a ``data:`` URI never fits in 1000 characters, so
:func:`image_markdown` uses a short ``http(s)`` URL of the stored PNG when the caller has one (a
storage base served over HTTP, see ``StorageResource.image_url_prefix``) and the ``data:`` URI
otherwise (then the image opens with one click, in the same table).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: viridis-like stops for cloud fraction 0 (clear) .. 1 (overcast)
STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
#: Markdown shorter than this is rendered inline by the Dagster UI (MetadataEntry.tsx, 1.13).
DAGSTER_INLINE_MARKDOWN_LIMIT = 1000
COLORBAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (no font file needed), bitmap fallback without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def cloud_colours(values: np.ndarray) -> np.ndarray:
    """RGB (n, 3) uint8 of cloud fractions (clipped to [0, 1]), vectorized."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(STOPS) - 1)
    i = np.minimum(v.astype(np.int64), len(STOPS) - 2)
    frac = (v - i)[..., None]
    return np.rint(STOPS[i] + (STOPS[i + 1] - STOPS[i]) * frac).astype(np.uint8)


def cloud_colour(value: float) -> tuple[int, int, int]:
    """Colour of one cloud fraction in [0, 1]."""
    r, g, b = (int(c) for c in cloud_colours(np.array([value]))[0])
    return r, g, b


def text_width(draw: ImageDraw.ImageDraw, text: str, fnt) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=fnt)
    return right - left


def draw_colorbar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str = "cloud fraction",
                  ticks: Sequence[float] = COLORBAR_TICKS) -> None:
    """A horizontal colour bar for cloud 0 (left) .. 1 (right) in `box` (x0, y0, x1, y1), at least
    40 px high: the title on top, the bar, tick marks and their labels under it."""
    x0, y0, x1, _ = box
    fnt = font(11)
    width = max(x1 - x0, 2)
    tw = text_width(draw, title, fnt)
    draw.text(((x0 + x1 - tw) / 2, y0), title, fill=TEXT, font=fnt)
    bar_top, bar_bottom = y0 + 14, y0 + 23
    colours = cloud_colours(np.arange(width) / (width - 1))
    for dx, colour in enumerate(colours.tolist()):
        draw.line([(x0 + dx, bar_top), (x0 + dx, bar_bottom)], fill=tuple(colour))
    draw.rectangle([x0, bar_top, x1 - 1, bar_bottom], outline=(60, 60, 60))
    for t in ticks:
        x = x0 + t * (width - 1)
        draw.line([(x, bar_bottom), (x, bar_bottom + 2)], fill=TEXT)
        label = f"{t:g}"
        w = text_width(draw, label, fnt)
        draw.text((min(max(x - w / 2, x0), x1 - w), bar_bottom + 3), label, fill=TEXT, font=fnt)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def image_markdown(alt: str, png: bytes, url: str | None = None) -> str:
    """Markdown showing an image: by its (short) URL when given, else the PNG inlined as a data URI."""
    if url:
        return f"![{alt}]({url})"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def rounded(value: float, digits: int = 3) -> float:
    """A float rounded for people (and for JSON metadata without 16-digit noise)."""
    return float(round(float(value), digits))


def md_table(header: Sequence[str], rows: Iterable[Iterable[object]], digits: int = 3) -> str:
    """A Markdown table; floats rounded to `digits` decimals, `|` escaped."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|") if v is not None else ""

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


#: Row order of a distribution table (the keys of `item_index.distribution`).
DISTRIBUTION_ROWS = ("min", "p10", "p25", "p50", "p75", "p90", "max", "mean")


def distributions_markdown(columns: Mapping[str, Mapping[str, float]], digits: int = 3) -> str:
    """One Markdown table of several distributions (quantiles + mean), one column each, rounded.

    ``{"cloud": {"min": 0.0, "p10": ...}, "nodata": {...}}`` -> ``| statistic | cloud | nodata |``."""
    names = [n for n, d in columns.items() if d]
    if not names:
        return "no chips: no distribution"
    rows = [(key, *(columns[n].get(key) for n in names)) for key in DISTRIBUTION_ROWS
            if any(key in columns[n] for n in names)]
    return md_table(["statistic", *names], rows, digits)
