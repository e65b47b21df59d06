"""Every sensor of the sample catalog, end to end through the library: statistics and pixels."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.windows import Window

from stacchip_assets import (
    Chipper,
    Indexer,
    LandsatIndexer,
    ModisIndexer,
    NoDataMaskChipIndexer,
    NodataValueIndexer,
    NoStatsChipIndexer,
    Sentinel2Indexer,
)
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS, generate_sample_catalog, sample_item_paths

CHIP = 128  # small chips so that every sample item has several rows and columns of them


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> dict[str, pystac.Item]:
    catalog = generate_sample_catalog(tmp_path_factory.mktemp("sample") / "catalog")
    return {item_id: pystac.Item.from_file(str(path)) for item_id, path in sample_item_paths(catalog).items()}


def read_asset(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read()


def reference_fractions(layer_at_grid: np.ndarray, x: int, y: int) -> float:
    return float(layer_at_grid[y * CHIP : (y + 1) * CHIP, x * CHIP : (x + 1) * CHIP].mean())


def masks_at_grid(item: pystac.Item, indexer) -> tuple[np.ndarray, np.ndarray]:
    """Cloud and nodata layers on the chip grid, computed here from the raw mask with plain numpy."""
    if isinstance(indexer, Sentinel2Indexer):
        scl = read_asset(item, "scl")[0]
        factor = indexer.shape[0] // scl.shape[0]
        scl = scl.repeat(factor, axis=0).repeat(factor, axis=1)
        return np.isin(scl, [1, 3, 8, 9, 10]), scl == 0
    if isinstance(indexer, LandsatIndexer):
        qa = read_asset(item, "qa_pixel")[0].astype(np.int64)
        return ((qa >> 1) & 1 | (qa >> 3) & 1 | (qa >> 4) & 1) == 1, (qa & 1) == 1
    if isinstance(indexer, NodataValueIndexer):
        vv = read_asset(item, "vv")[0]
        return np.zeros(vv.shape, dtype=bool), vv == -32768.0
    if isinstance(indexer, ModisIndexer):
        qc = read_asset(item, "sur_refl_qc_500m")[0].astype(np.int64) % 4
        return qc == 2, qc == 3
    zeros = np.zeros(indexer.shape, dtype=bool)
    return zeros, zeros


EXPECTED_CLASS = {
    "sentinel-2-l2a": Sentinel2Indexer,
    "landsat-c2-l2": LandsatIndexer,
    "modis-09a1-061": ModisIndexer,
    "naip": NoStatsChipIndexer,
    "sentinel-1-rtc": NodataValueIndexer,
}
ALL_ITEMS = [(collection, item_id) for collection, ids in SAMPLE_COLLECTIONS.items() for item_id in ids]


@pytest.mark.parametrize("collection,item_id", ALL_ITEMS)
def test_statistics_match_independent_counts(items, collection, item_id):
    item = items[item_id]
    indexer = Indexer(item, chip_size=CHIP)
    assert type(indexer) is EXPECTED_CLASS[collection]
    cloud, nodata = masks_at_grid(item, indexer)
    table = indexer.create_index()
    expected_kept = {
        (x, y)
        for y in range(indexer.y_size)
        for x in range(indexer.x_size)
        if reference_fractions(nodata, x, y) <= 0.5
    }
    rows = table.to_pylist()
    assert {(r["chip_index_x"], r["chip_index_y"]) for r in rows} == expected_kept
    for r in rows:
        x, y = r["chip_index_x"], r["chip_index_y"]
        assert r["cloud_cover_percentage"] == pytest.approx(reference_fractions(cloud, x, y), abs=1e-6)
        assert r["nodata_percentage"] == pytest.approx(reference_fractions(nodata, x, y), abs=1e-6)
        assert r["collection"] == collection and r["item_id"] == item_id
    if collection == "sentinel-2-l2a":
        assert len(expected_kept) < indexer.size  # the nodata corner drops chips
        assert max(r["cloud_cover_percentage"] for r in rows) > 0.5 > min(r["cloud_cover_percentage"] for r in rows)


def test_sentinel1_nodata_margin_through_a_caller_mask(items):
    (item_id,) = SAMPLE_COLLECTIONS["sentinel-1-rtc"]
    item = items[item_id]
    vv = read_asset(item, "vv")[0]
    mask = vv == -32768.0
    assert mask.any()
    table = NoDataMaskChipIndexer(item, mask, chip_size=CHIP).create_index()
    for r in table.to_pylist():
        assert r["nodata_percentage"] == pytest.approx(reference_fractions(mask, r["chip_index_x"], r["chip_index_y"]), abs=1e-6)
        assert r["cloud_cover_percentage"] == 0
    assert table.num_rows < NoStatsChipIndexer(item, chip_size=CHIP).size


@pytest.mark.parametrize("collection,item_id", ALL_ITEMS)
def test_pixels_equal_source_windows_for_every_asset(items, collection, item_id):
    item = items[item_id]
    indexer = Indexer(item, chip_size=CHIP)
    chipper = Chipper(indexer)
    assert "thumbnail" not in chipper.asset_keys
    last = (indexer.x_size - 1, indexer.y_size - 1)
    for x, y in [(0, 0), last, (last[0], 0), (0, last[1])]:
        chip = chipper.chip(x, y)
        for key, pixels in chip.items():
            source = read_asset(item, key)
            factor = indexer.shape[0] / source.shape[1]
            if factor == 1:
                expected = source[:, y * CHIP : (y + 1) * CHIP, x * CHIP : (x + 1) * CHIP]
            else:  # coarser asset: nearest upsampling by pixel centre
                rows = np.floor((y * CHIP + np.arange(CHIP) + 0.5) / factor).astype(int)
                cols = np.floor((x * CHIP + np.arange(CHIP) + 0.5) / factor).astype(int)
                expected = source[:, rows[:, None], cols[None, :]]
                if float(factor).is_integer() and CHIP % factor == 0:
                    k = int(factor)
                    window = source[:, y * CHIP // k : (y + 1) * CHIP // k, x * CHIP // k : (x + 1) * CHIP // k]
                    np.testing.assert_array_equal(expected, window.repeat(k, axis=1).repeat(k, axis=2))
            np.testing.assert_array_equal(pixels, expected, err_msg=f"{item_id} {key} chip {x},{y}")


def test_every_chip_of_an_index_in_one_batch(items):
    item = items[SAMPLE_COLLECTIONS["sentinel-2-l2a"][0]]
    indexer = Indexer(item, chip_size=CHIP)
    chipper = Chipper(indexer, assets=["red", "scl"])
    xs = indexer.index["chip_index_x"].to_numpy()
    ys = indexer.index["chip_index_y"].to_numpy()
    batch = chipper.chips(xs, ys)
    assert batch["red"].shape == (len(xs), 1, CHIP, CHIP)
    with rasterio.open(item.assets["red"].get_absolute_href()) as src:
        for i in range(0, len(xs), 5):
            window = src.read(window=Window(int(xs[i]) * CHIP, int(ys[i]) * CHIP, CHIP, CHIP))
            np.testing.assert_array_equal(batch["red"][i], window)
    iterated = list(chipper)
    assert len(iterated) == len(chipper) == len(xs)
    np.testing.assert_array_equal(iterated[-1][2]["scl"], batch["scl"][-1])
