"""Per-chip cloud and nodata fractions against independent per-chip counts on real COGs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from affine import Affine

from stacchip_assets import (
    ChipIndexer,
    Indexer,
    LandsatIndexer,
    MaskAssetMissingError,
    ModisIndexer,
    NoDataMaskChipIndexer,
    Sentinel2Indexer,
)

from tests.support.cogs import make_item, write_cog

ROWS, COLS = 800, 1100  # 10 m grid: 4 x 3 chips of 256 px
X0, Y0 = 399960.0, 5500020.0
SIZE = 256


def transform(res: float) -> Affine:
    return Affine(res, 0, X0, 0, -res, Y0)


def blobby_classes(rng, shape, classes, nodata_corner: float = 0.0) -> np.ndarray:
    """A class raster made of 10 px blocks (so chips get varied, non-trivial fractions)."""
    coarse = rng.choice(classes, size=(shape[0] // 10 + 1, shape[1] // 10 + 1))
    data = np.kron(coarse, np.ones((10, 10), dtype=coarse.dtype))[: shape[0], : shape[1]]
    if nodata_corner:
        rows, cols = np.indices(shape)
        data[(rows / shape[0] + cols / shape[1]) < nodata_corner] = 0
    return data


def per_chip(mask_at_grid: np.ndarray, x: int, y: int) -> float:
    """The reference: the mean of a grid-resolution mask over one chip window."""
    return float(mask_at_grid[y * SIZE : (y + 1) * SIZE, x * SIZE : (x + 1) * SIZE].mean())


def check_index(index: pa.Table, expected_cloud: dict, expected_nodata: dict, max_nodata: float = 0.5):
    kept = {(x, y) for (x, y), v in expected_nodata.items() if v <= max_nodata}
    rows = index.to_pylist()
    assert {(r["chip_index_x"], r["chip_index_y"]) for r in rows} == kept
    assert len(kept) < len(expected_nodata), "the test data must make some chips exceed the nodata limit"
    for r in rows:
        key = (r["chip_index_x"], r["chip_index_y"])
        assert r["cloud_cover_percentage"] == pytest.approx(expected_cloud[key], abs=1e-6)
        assert r["nodata_percentage"] == pytest.approx(expected_nodata[key], abs=1e-6)
        assert 0 <= r["cloud_cover_percentage"] <= 1 and 0 <= r["nodata_percentage"] <= 1
    varied = "nodata_percentage" if not any(expected_cloud.values()) else "cloud_cover_percentage"
    assert len({r[varied] for r in rows}) > 2, "fractions should vary between chips"


def test_sentinel2_scl_at_20m(tmp_path):
    rng = np.random.default_rng(1)
    band = rng.integers(1, 10000, size=(ROWS, COLS), dtype=np.uint16)
    scl = blobby_classes(rng, (ROWS // 2, COLS // 2), np.arange(0, 12, dtype=np.uint8), nodata_corner=0.8)
    item = make_item(
        "s2-test",
        {
            "red": (write_cog(tmp_path / "red.tif", band, transform(10)), (ROWS, COLS), transform(10)),
            "scl": (write_cog(tmp_path / "scl.tif", scl, transform(20), nodata=0), scl.shape, transform(20)),
        },
        collection="sentinel-2-l2a",
    )
    indexer = Indexer(item)
    assert isinstance(indexer, Sentinel2Indexer) and indexer.grid_asset_key == "red"
    upsampled = scl.repeat(2, axis=0).repeat(2, axis=1)  # what stacchip does, as the reference
    cloud = np.isin(upsampled, [1, 3, 8, 9, 10])
    nodata = upsampled == 0
    cells = [(x, y) for y in range(indexer.y_size) for x in range(indexer.x_size)]
    check_index(
        indexer.create_index(),
        {c: per_chip(cloud, *c) for c in cells},
        {c: per_chip(nodata, *c) for c in cells},
    )
    # get_stats(x, y) agrees with the vectorized path.
    assert indexer.get_stats(1, 1) == pytest.approx((per_chip(cloud, 1, 1), per_chip(nodata, 1, 1)))


def test_landsat_qa_pixel_bits(tmp_path):
    rng = np.random.default_rng(2)
    shape = (ROWS, COLS)
    qa = blobby_classes(rng, shape, np.arange(0, 1 << 10, dtype=np.uint16))
    qa &= ~np.uint16(1)
    rows, cols = np.indices(shape)
    qa[cols < rows * 0.9 - 150] |= 1  # a slanted fill margin
    item = make_item("ls-test", {"qa_pixel": (write_cog(tmp_path / "qa.tif", qa, transform(30)), shape, transform(30))}, collection="landsat-c2-l2")
    indexer = Indexer(item)
    assert isinstance(indexer, LandsatIndexer)
    cloud = ((qa >> 1) & 1 | (qa >> 3) & 1 | (qa >> 4) & 1).astype(bool)
    nodata = (qa & 1).astype(bool)
    cells = [(x, y) for y in range(indexer.y_size) for x in range(indexer.x_size)]
    check_index(indexer.create_index(), {c: per_chip(cloud, *c) for c in cells}, {c: per_chip(nodata, *c) for c in cells})


def test_landsat_index_respects_chip_max_nodata(tmp_path):
    rng = np.random.default_rng(3)
    qa = np.zeros((ROWS, COLS), dtype=np.uint16)
    qa[:, :300] = 1
    item = make_item("ls-fill", {"qa_pixel": (write_cog(tmp_path / "qa.tif", qa, transform(30)), qa.shape, transform(30))})
    strict = LandsatIndexer(item, chip_max_nodata=0.0).create_index()
    assert set(strict["chip_index_x"].to_pylist()) == {2, 3}
    default = LandsatIndexer(item).create_index()
    assert set(default["chip_index_x"].to_pylist()) == {1, 2, 3}  # chip 1 has 44/256 fill columns
    assert rng is not None


def test_modis_modland_bits(tmp_path):
    rng = np.random.default_rng(4)
    shape = (ROWS, COLS)
    qc = blobby_classes(rng, shape, np.array([0, 1, 2, 3, 3, 3], dtype=np.uint32))
    qc |= (rng.integers(0, 1 << 20, size=shape, dtype=np.uint32) << 2)  # higher bits must be ignored
    item = make_item(
        "modis-test",
        {"sur_refl_qc_500m": (write_cog(tmp_path / "qc.tif", qc, transform(500)), shape, transform(500))},
        crs_code=None,
        collection="modis-09a1-061",
    )
    item.properties.pop("proj:code")
    item.properties["proj:wkt2"] = 'PROJCS["unnamed",GEOGCS["Unknown datum based upon the custom spheroid",DATUM["Not specified (based on custom spheroid)",SPHEROID["Custom spheroid",6371007.181,0]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Sinusoidal"],PARAMETER["longitude_of_center",0],PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["Meter",1]]'
    indexer = Indexer(item)
    assert isinstance(indexer, ModisIndexer)
    modland = qc & 3
    cells = [(x, y) for y in range(indexer.y_size) for x in range(indexer.x_size)]
    check_index(
        indexer.create_index(),
        {c: per_chip(modland == 2, *c) for c in cells},
        {c: per_chip(modland == 3, *c) for c in cells},
    )


def test_mask_at_a_non_integer_ratio_counts_pixels_by_centre(tmp_path):
    """A 30 m SCL under a 10 m grid with 256 px chips: 85.33 mask pixels per chip side."""
    rng = np.random.default_rng(5)
    band = np.ones((ROWS, COLS), dtype=np.uint16)
    mshape = (ROWS // 3 + 1, COLS // 3 + 1)
    scl = blobby_classes(rng, mshape, np.arange(0, 12, dtype=np.uint8), nodata_corner=0.9)
    item = make_item(
        "s2-30m",
        {
            "red": (write_cog(tmp_path / "red.tif", band, transform(10)), (ROWS, COLS), transform(10)),
            "scl": (write_cog(tmp_path / "scl.tif", scl, transform(30)), mshape, transform(30)),
        },
    )
    indexer = Sentinel2Indexer(item)
    centres_x = X0 + (np.arange(mshape[1]) + 0.5) * 30
    centres_y = Y0 - (np.arange(mshape[0]) + 0.5) * 30
    expected_cloud, expected_nodata = {}, {}
    for y in range(indexer.y_size):
        for x in range(indexer.x_size):
            in_x = (centres_x >= X0 + x * 2560) & (centres_x < X0 + (x + 1) * 2560)
            in_y = (centres_y <= Y0 - y * 2560) & (centres_y > Y0 - (y + 1) * 2560)
            window = scl[np.ix_(in_y, in_x)]
            expected_cloud[(x, y)] = float(np.isin(window, [1, 3, 8, 9, 10]).mean())
            expected_nodata[(x, y)] = float((window == 0).mean())
    check_index(indexer.create_index(), expected_cloud, expected_nodata)


def test_caller_nodata_mask(tmp_path):
    rng = np.random.default_rng(6)
    band = rng.integers(1, 100, size=(ROWS, COLS), dtype=np.uint16)
    item = make_item("s1-test", {"vv": (write_cog(tmp_path / "vv.tif", band, transform(10)), (ROWS, COLS), transform(10))})
    mask = blobby_classes(rng, (ROWS, COLS), np.array([0, 0, 0, 1])).astype(bool)
    mask[:, :300] = True
    indexer = NoDataMaskChipIndexer(item, mask)
    cells = [(x, y) for y in range(indexer.y_size) for x in range(indexer.x_size)]
    check_index(indexer.create_index(), {c: 0.0 for c in cells}, {c: per_chip(mask, *c) for c in cells})


def test_subclass_overriding_only_get_stats_produces_a_correct_index(tmp_path):
    item = make_item(
        "custom",
        {"b": (write_cog(tmp_path / "b.tif", np.ones((ROWS, COLS), np.uint8), transform(10)), (ROWS, COLS), transform(10))},
    )

    class RowBasedIndexer(ChipIndexer):
        def get_stats(self, x, y):
            return x / 10, y / 4  # nodata grows to the south: y=3 (0.75) is dropped

    table = RowBasedIndexer(item).create_index()
    rows = table.to_pylist()
    assert len(rows) == 4 * 3
    for r in rows:
        assert r["cloud_cover_percentage"] == pytest.approx(r["chip_index_x"] / 10)
        assert r["nodata_percentage"] == pytest.approx(r["chip_index_y"] / 4)
        assert r["chipid"] == f"custom-{r['chip_index_x']}-{r['chip_index_y']}"

    class NoCloudsSentinel2(Sentinel2Indexer):
        def get_stats(self, x, y):
            return 0.0, 0.0

    assert NoCloudsSentinel2(item).create_index().num_rows == 12  # no scl needed: get_stats wins


def test_sentinel2_item_without_scl_names_the_missing_mask(tmp_path):
    item = make_item(
        "no-scl",
        {"red": (write_cog(tmp_path / "r.tif", np.ones((ROWS, COLS), np.uint16), transform(10)), (ROWS, COLS), transform(10))},
        collection="sentinel-2-l2a",
    )
    indexer = Indexer(item)
    with pytest.raises(MaskAssetMissingError, match=r"no-scl.*scl"):
        indexer.create_index()
