"""The pictures of the indexes, on real items of the sample catalog (pixels read from its COGs):
the quicklook (labelled colour bar, legend), the chip gallery and the combined coverage map."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
import pystac
import pytest
from PIL import Image
from scipy import ndimage

from stacchip_assets.index.chip_indexer import Indexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.index.coverage import render_coverage
from stacchip_assets.index.gallery import CAPTION_HEIGHT, GAP, PERCENTILES, pick_chips
from stacchip_assets.index.item_index import index_item
from stacchip_assets.index.pictures import (
    DAGSTER_INLINE_MARKDOWN_LIMIT,
    cloud_colours,
    distributions_markdown,
    image_markdown,
)
from stacchip_assets.index.quicklook import COLORBAR_HEIGHT, DROPPED, LEGEND_HEIGHT, quicklook_layout
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import item_json_path

S2 = ("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A")
NAIP = ("naip", "me_m_4406901_ne_19_060_20211006")
S1 = ("sentinel-1-rtc", "S1A_IW_GRDH_1SDV_20230715T165325_20230715T165350_049437_05F1E2_rtc")
LANDSAT = ("landsat-c2-l2", "LC09_L2SP_107030_20230712_02_T1")


def load(catalog, which) -> pystac.Item:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pystac.Item.from_file(str(item_json_path(catalog, *which)))


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def indexed(sample_catalog, tmp_path_factory):
    """index_item on a few real items: {(collection, item_id): ItemIndexResult}."""
    storage = Storage(str(tmp_path_factory.mktemp("pictures-base")))
    return {which: index_item(load(sample_catalog, which), storage) for which in (S2, NAIP, S1, LANDSAT)}


def dark(region: np.ndarray) -> int:
    return int((region.max(axis=-1) < 110).sum())


def test_quicklook_has_a_labelled_colour_bar_and_a_legend(indexed):
    result = indexed[S2]
    pixels = decode(result.quicklook_png)
    assert pixels.shape == (320, 320, 3)
    layout = quicklook_layout((320, 320))
    x0, y0, x1, y1 = layout["colorbar"]
    assert y1 - y0 == COLORBAR_HEIGHT - 2
    bar = pixels[y0 + 15 : y0 + 23, x0 + 2 : x1 - 2]
    # the bar itself: the palette from clear (left) to overcast (right)
    assert np.abs(bar[:, 0].astype(int) - cloud_colours(np.array([0.0]))[0]).max() <= 12
    assert np.abs(bar[:, -1].astype(int) - cloud_colours(np.array([1.0]))[0]).max() <= 12
    # title above, tick labels under it at 0, 0.5, 1: text pixels where the labels are, none in the gaps
    assert dark(pixels[y0 : y0 + 13, 120:200]) > 20
    labels = pixels[y0 + 26 : y1, :]
    width = x1 - x0
    for t in (0.0, 0.5, 1.0):
        cx = int(x0 + t * (width - 1))
        assert dark(labels[:, max(cx - 8, 0) : cx + 8]) > 5, t
    assert dark(labels[:, x0 + int(0.62 * width) : x0 + int(0.70 * width)]) == 0
    # legend: the grey swatch of dropped chips and its text
    lx0, ly0, _, ly1 = layout["legend"]
    legend = pixels[ly0:ly1]
    assert (legend == DROPPED).all(axis=-1).sum() >= 80
    assert dark(legend[:, 30:150]) > 30
    assert LEGEND_HEIGHT == ly1 - ly0
    # the plot shows dropped chips too (the S2 item has some)
    assert result.chips_dropped > 0 and (pixels[: ly0] == DROPPED).all(axis=-1).sum() > 100


@pytest.mark.parametrize("which,mode", [(S2, "rgb"), (NAIP, "rgb"), (S1, "grey")])
def test_gallery_pixels_are_the_chips_pixels_stretched(indexed, which, mode):
    result = indexed[which]
    gallery = result.gallery
    assert gallery is not None and result.gallery_error is None and gallery.mode == mode
    n = len(gallery.xs)
    assert n == min(4, result.chips_kept)
    pixels = decode(gallery.png)
    assert pixels.shape == (gallery.tile + 2 * GAP + CAPTION_HEIGHT, n * gallery.tile + (n + 1) * GAP, 3)
    # the chips: clearest to cloudiest, from the index
    rows = pick_chips(result.table, 4)
    assert gallery.xs.tolist() == result.table.column("chip_index_x").to_numpy()[rows].tolist()
    assert np.all(np.diff(gallery.cloud) >= 0)
    # recompute from the COGs, independently of the gallery's code path: Chipper + numpy
    indexer = Indexer(load_stored(result), chip_size=result.settings.chip_size)
    with Chipper(indexer) as chipper:
        chips = chipper.chips(gallery.xs, gallery.ys)
        nodata = {key: chipper.reader(key).dataset.nodata for key, _ in gallery.bands}
    expected = []
    for key, band in gallery.bands:
        values = chips[key][:, band, :: gallery.step, :: gallery.step].astype(np.float64)
        valid = values != nodata[key] if nodata[key] is not None else np.ones(values.shape, bool)
        lo, hi = np.percentile(values[valid], PERCENTILES)
        expected.append(np.where(valid, np.clip(np.rint((values - lo) / (hi - lo) * 255), 0, 255), 0).astype(np.uint8))
    if mode == "grey":
        expected = expected * 3
    expected = np.stack(expected, axis=-1)
    for i, (left, top) in enumerate(gallery.origins):
        tile = pixels[top : top + gallery.tile, left : left + gallery.tile]
        np.testing.assert_array_equal(tile, expected[i])
    assert expected.std() > 10  # real imagery, not a flat fill
    # the captions: x,y under each tile
    caption = pixels[GAP + gallery.tile + 1 :, GAP : GAP + gallery.tile]
    assert dark(caption) > 20


def load_stored(result) -> pystac.Item:
    return Storage(result.item_uri.rsplit("/", 3)[0]).read_item(result.collection, result.item_id)


def test_coverage_map_draws_every_footprint(indexed):
    big = [indexed[w] for w in (NAIP, S1, LANDSAT)]  # chips large enough in their panels to count
    table = pa.concat_tables([r.table for r in big])
    coverage = render_coverage(table)
    pixels = decode(coverage.png)
    assert pixels.shape[1] == 3 * 300 and pixels.shape[0] == 260 + 48
    assert [p.collection for p in coverage.panels] == sorted(r.collection for r in big)
    for panel in coverage.panels:
        rows = table.filter(pa.compute.equal(table.column("collection"), panel.collection))
        assert panel.chips == panel.drawn == rows.num_rows and panel.items == 1
        x0, y0, x1, y1 = panel.box
        crop = pixels[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)
        fills = np.unique(cloud_colours(rows.column("cloud_cover_percentage").to_numpy()), axis=0)
        is_fill = (crop[:, None, :] == fills[None, :, :]).all(axis=-1).any(axis=1).reshape(y1 - y0 + 1, x1 - x0 + 1)
        _, count = ndimage.label(is_fill)  # one region per footprint: outlines separate neighbours
        assert count == rows.num_rows, panel.collection
    # a graticule: light grey lines and degree labels in every panel
    assert ((pixels == (205, 205, 205)).all(axis=-1)).sum() > 200
    assert render_coverage(table.slice(0, 0)) is None


def test_coverage_map_thins_above_its_limit(indexed):
    table = indexed[S2].table
    coverage = render_coverage(table, max_footprints=5)
    assert coverage.panels[0].chips == table.num_rows and coverage.panels[0].drawn == 5 < table.num_rows


def test_distributions_are_rounded_tables(indexed):
    result = indexed[S2]
    md = distributions_markdown({"cloud": result.distribution("cloud_cover_percentage"),
                                 "nodata": result.distribution("nodata_percentage")})
    lines = md.splitlines()
    assert lines[0] == "| statistic | cloud | nodata |" and len(lines) == 2 + 8
    cells = [c.strip() for line in lines[2:] for c in line.strip("|").split("|")[1:]]
    assert all(len(c.split(".")[1]) == 3 for c in cells), cells
    p50 = next(line for line in lines if line.startswith("| p50 "))
    assert p50.split("|")[2].strip() == f"{result.distribution('cloud_cover_percentage')['p50']:.3f}"


def test_image_markdown_is_short_with_a_url_only():
    png = b"\x89PNG" + bytes(3000)
    assert len(image_markdown("q", png, "http://127.0.0.1:1/q.png")) < DAGSTER_INLINE_MARKDOWN_LIMIT
    assert image_markdown("q", png).startswith("![q](data:image/png;base64,")


def test_an_unreadable_band_costs_the_gallery_not_the_index(sample_catalog, tmp_path):
    from tests.support.dagster_support import copy_catalog

    catalog = copy_catalog(sample_catalog, tmp_path / "catalog")
    item = load(catalog, S2)
    item.make_asset_hrefs_absolute()
    red = item.assets["red"].href
    data = open(red, "rb").read()
    with open(red, "wb") as f:  # header intact, tiles cut
        f.write(data[: len(data) // 3])
    result = index_item(item, Storage(str(tmp_path / "base")))
    assert result.chips_kept > 0 and result.gallery is None and result.gallery_uri is None
    assert "red" in result.gallery_error and "AssetReadError" in result.gallery_error
    assert Storage(str(tmp_path / "base")).read_index(*S2).num_rows == result.chips_kept
