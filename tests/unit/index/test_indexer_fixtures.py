"""Chip grids and footprints of real STAC items from public catalogs (metadata only, no pixels)."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pyproj
import pystac
import pytest
import shapely

from stacchip_assets import Indexer, NoProjectionInfoError, NoStatsChipIndexer, StacchipError, UnsupportedCRSError
from stacchip_assets.index.chip_indexer import ChipIndexer

from tests.conftest import PROJECT

#: Real item JSON from public catalogs, copied into the repository (tests/fixtures/stac-items/MANIFEST.tsv
#: says where each one comes from, at which commit, and what is special about it).
FIXTURES = PROJECT / "tests" / "support" / "fixtures" / "stac-items"

# Expected grid of each fixture: (asset whose proj fields give the grid, or None for item-level fields;
# rows, cols, EPSG), read off the item JSON by hand:
# the highest-resolution raster data asset, never a thumbnail/overview, shape+transform from one place.
EXPECTED_GRIDS = {
    "3dep-seamless__n34w116-13.json": (None, 10812, 10812, 5498),
    "cop-dem-glo-30__Copernicus_DSM_COG_10_S90_00_W180_00_DEM.json": (None, 3600, 360, 4326),
    "esa-worldcover__ESA_WorldCover_10m_2021_v200_S60W030.json": ("map", 36000, 36000, 4326),
    "landsat-c2-l2__LC09_L2SP_089090_20240417_02_T1.json": (None, 7971, 7971, 32655),
    "landsat-c2l2-sr__LC09_L2SR_086107_20240311_20240312_02_T2_SR.json": (None, 8271, 8331, 3031),
    "naip-source__m_4207009_ne_19_060_20211024.json": (None, 12666, 9704, 26919),
    "naip__pr_m_1806551_nw_20_030_20221212_20230329.json": (None, 25398, 24391, 26920),
    "sentinel-1-rtc__S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc.json": (None, 12949, 27526, 32633),
    "sentinel-2-c1-l2a__S2A_T20HNJ_20240311T140636_L2A.json": ("red", 10980, 10980, 32720),
    "sentinel-2-l2a__S2A_31UDQ_20230617_0_L2A.json": ("blue", 10980, 10980, 32631),
    "sentinel-2-l2a__S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json": ("AOT", 10980, 10980, 32606),
    "sentinel-s2-l2a-cogs__S2A_28QCH_20200714_0_L2A.json": ("visual", 10980, 10980, 32628),
    "stacchip-test__m_4207009_ne_19_060_20211024_800x1000.json": (None, 800, 1000, 26919),
}
NO_GRID = [
    "fc_percentile_albers_annual__3af1acae-0255-4762-b2b2-f26034cf3ce8.json",
    "sentinel-1-grd__S1A_IW_GRDH_1SDV_20250312T052236_20250312T052301_058267_073394.json",
]


def load(name: str) -> pystac.Item:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pystac.Item.from_file(str(FIXTURES / name))


def raw_grid(name: str, asset_key: str | None) -> list[float]:
    """The proj:transform of the expected grid, straight from the JSON text (no pystac)."""
    data = json.loads((FIXTURES / name).read_text())
    fields = data["assets"][asset_key] if asset_key else data["properties"]
    return [float(v) for v in fields["proj:transform"][:6]]


def independent_footprint_corners(transform: list[float], crs: pyproj.CRS, x: int, y: int, size: int = 256):
    """Chip corners from the affine, reprojected one by one with pyproj (the reference)."""
    a, b, c, d, e, f = transform
    to_wgs84 = pyproj.Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
    corners = []
    for col, row in ((x * size, y * size), (x * size, (y + 1) * size), ((x + 1) * size, (y + 1) * size), ((x + 1) * size, y * size)):
        corners.append(to_wgs84.transform(a * col + b * row + c, d * col + e * row + f))
    return np.array(corners)


def test_every_fixture_is_covered():
    assert FIXTURES.is_dir(), f"the STAC item fixtures are missing: {FIXTURES}"
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == set(EXPECTED_GRIDS) | set(NO_GRID)
    manifest = (FIXTURES / "MANIFEST.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in manifest[1:] if line.strip()]
    assert {row[0] for row in rows} == names  # every fixture says where it comes from
    assert all(len(row) == len(manifest[0].split("\t")) and "@" in row[1] for row in rows)


@pytest.mark.parametrize("name", sorted(EXPECTED_GRIDS))
def test_grid_sizes_and_footprints(name):
    asset_key, rows, cols, epsg = EXPECTED_GRIDS[name]
    item = load(name)
    indexer = NoStatsChipIndexer(item)
    if asset_key is not None:
        assert indexer.grid_asset_key == asset_key
    assert indexer.shape == [rows, cols]
    assert (indexer.x_size, indexer.y_size) == (cols // 256, rows // 256)
    assert indexer.size == (cols // 256) * (rows // 256)
    assert pyproj.CRS(indexer.crs.to_wkt()).to_epsg() == epsg
    transform = raw_grid(name, asset_key)
    assert list(indexer.transform)[:6] == pytest.approx(transform, abs=0, rel=0)

    xs, ys = indexer.grid.positions()
    footprints = indexer.grid.footprints(xs, ys)
    assert shapely.is_valid(footprints).all()
    # Check a spread of chips (all four corners of the grid and a sample between) against pyproj.
    rng = np.random.default_rng(0)
    picks = {0, indexer.x_size - 1, indexer.size - indexer.x_size, indexer.size - 1, *rng.integers(0, indexer.size, 40).tolist()}
    crs = pyproj.CRS.from_user_input(indexer.crs.to_wkt())
    for i in sorted(picks):
        x, y = int(xs[i]), int(ys[i])
        expected = independent_footprint_corners(transform, crs, x, y)
        got = np.array(footprints[i].exterior.coords)[:4]
        # Same four corners (the ring may start anywhere after orientation).
        for corner in expected:
            assert np.min(np.abs(got - corner).max(axis=1)) < 1e-7, (name, x, y, corner, got)
        assert indexer.get_chip_bbox(x, y).equals_exact(footprints[i], 1e-12)
        # A footprint never wraps around the globe.
        minx, _, maxx, _ = footprints[i].bounds
        assert maxx - minx < 10


@pytest.mark.parametrize("name", NO_GRID)
def test_items_without_projection_info_raise_naming_the_item(name):
    item = load(name)
    with pytest.raises(NoProjectionInfoError) as excinfo:
        Indexer(item)
    assert item.id in str(excinfo.value)
    assert isinstance(excinfo.value, StacchipError)


def test_proj_code_and_proj_epsg_give_the_same_grid():
    name = "sentinel-2-l2a__S2A_31UDQ_20230617_0_L2A.json"
    item = load(name)
    assert item.properties.get("proj:code") == "EPSG:32631"  # pystac 1.15 migrated proj:epsg
    legacy = copy.deepcopy(item)
    legacy.properties.pop("proj:code")
    legacy.properties["proj:epsg"] = 32631
    a, b = NoStatsChipIndexer(item), NoStatsChipIndexer(legacy)
    assert a.crs == b.crs and a.transform == b.transform
    assert a.get_chip_bbox(3, 5).equals_exact(b.get_chip_bbox(3, 5), 0)


def test_wkt2_and_projjson_crs_fields():
    item = load("stacchip-test__m_4207009_ne_19_060_20211024_800x1000.json")
    for field, value in (
        ("proj:wkt2", pyproj.CRS.from_epsg(26919).to_wkt()),
        ("proj:projjson", pyproj.CRS.from_epsg(26919).to_json_dict()),
    ):
        variant = copy.deepcopy(item)
        for key in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"):
            variant.properties.pop(key, None)
        variant.properties[field] = value
        assert NoStatsChipIndexer(variant).crs.to_epsg() == 26919


def test_unknown_crs_is_a_clear_error():
    item = load("stacchip-test__m_4207009_ne_19_060_20211024_800x1000.json")
    item.properties.pop("proj:epsg", None)
    item.properties.pop("proj:wkt2", None)
    item.properties["proj:code"] = "EPSG:999999"
    with pytest.raises(UnsupportedCRSError, match=item.id):
        Indexer(item)


def test_grid_uses_the_finest_asset_not_the_coarsest():
    """stacchip 0.1.38 pairs the largest shape with the coarsest transform (60 m) on Sentinel-2."""
    item = load("sentinel-2-c1-l2a__S2A_T20HNJ_20240311T140636_L2A.json")
    indexer = Indexer(item)
    assert indexer.transform.a == 10 and indexer.shape == [10980, 10980]
    # The whole grid is 109.8 km wide, the tile's real width.
    minx, miny, maxx, maxy = indexer.bbox
    assert (maxx - minx, maxy - miny) == (109800.0, 109800.0)


def test_polar_stereographic_footprints_are_valid_and_rotated():
    item = load("landsat-c2l2-sr__LC09_L2SR_086107_20240311_20240312_02_T2_SR.json")
    indexer = NoStatsChipIndexer(item)
    footprints = indexer.grid.footprints(*indexer.grid.positions())
    assert shapely.is_valid(footprints).all()
    lat = shapely.get_coordinates(footprints)[:, 1]
    assert lat.min() > -69 and lat.max() < -65  # the scene lies at ~66-68 S
    # In polar stereographic the grid is rotated: a chip's top edge is not a parallel.
    coords = np.array(footprints[0].exterior.coords)
    assert abs(coords[0, 1] - coords[3, 1]) > 1e-4


def test_geographic_tile_at_the_antimeridian_and_pole():
    item = load("cop-dem-glo-30__Copernicus_DSM_COG_10_S90_00_W180_00_DEM.json")
    indexer = NoStatsChipIndexer(item)
    assert (indexer.x_size, indexer.y_size) == (1, 14)
    footprints = indexer.grid.footprints(*indexer.grid.positions())
    assert shapely.is_valid(footprints).all()
    bounds = shapely.bounds(footprints)
    # The tile starts half a pixel west of -180; footprints keep that and stay under 1 degree wide.
    assert bounds[:, 0].min() == pytest.approx(-180.0013888888889)
    assert ((bounds[:, 2] - bounds[:, 0]) < 1).all()


def test_utm_grid_crossing_the_antimeridian_stays_one_valid_polygon_per_chip():
    item = load("sentinel-2-l2a__S2A_31UDQ_20230617_0_L2A.json")
    # Move the tile to UTM zone 60S near Fiji, where 180 degrees is ~x=833 km: the tile crosses it.
    item.properties["proj:code"] = "EPSG:32760"
    for asset in item.assets.values():
        if "proj:transform" in asset.extra_fields:
            t = list(asset.extra_fields["proj:transform"])
            t[2], t[5] = 799980, 8100000
            asset.extra_fields["proj:transform"] = t
    indexer = NoStatsChipIndexer(item)
    footprints = indexer.grid.footprints(*indexer.grid.positions())
    assert shapely.is_valid(footprints).all()
    bounds = shapely.bounds(footprints)
    widths = bounds[:, 2] - bounds[:, 0]
    assert widths.max() < 0.1  # no chip wraps around the globe
    assert (bounds[:, 2] > 180).any() and (bounds[:, 0] < 180).any()  # some chips straddle 180
    # The shifted footprint of a straddling chip is the same place: its corners equal pyproj's mod 360.
    straddling = int(np.argmax((bounds[:, 0] < 180) & (bounds[:, 2] > 180)))
    xs, ys = indexer.grid.positions()
    expected = independent_footprint_corners(list(indexer.transform)[:6], pyproj.CRS.from_epsg(32760), int(xs[straddling]), int(ys[straddling]))
    got = np.array(footprints[straddling].exterior.coords)[:4]
    for corner in expected:
        diffs = np.abs(((got - corner) + [180, 0]) % [360, 1e9] - [180, 0])
        assert diffs.max(axis=1).min() < 1e-7


def test_shape_given_by_hand_replaces_the_item_shape():
    item = load("sentinel-2-l2a__S2A_31UDQ_20230617_0_L2A.json")
    indexer = NoStatsChipIndexer(item, shape=(1000, 600))
    assert indexer.shape == [1000, 600] and (indexer.x_size, indexer.y_size) == (2, 3)


def test_stride_and_padding_options():
    item = load("stacchip-test__m_4207009_ne_19_060_20211024_800x1000.json")  # 800 rows x 1000 cols
    assert (NoStatsChipIndexer(item).x_size, NoStatsChipIndexer(item).y_size) == (3, 3)
    overlapping = NoStatsChipIndexer(item, stride=128)
    assert (overlapping.x_size, overlapping.y_size) == ((1000 - 256) // 128 + 1, (800 - 256) // 128 + 1)
    padded = NoStatsChipIndexer(item, pad_edges=True)
    assert (padded.x_size, padded.y_size) == (4, 4)
    table = padded.create_index()
    assert table.num_rows == 16  # NoStats: nothing dropped
    assert set(table.column("chip_stride").to_pylist()) == {256}
    chip_size_larger_than_scene = NoStatsChipIndexer(item, chip_size=2048)
    assert chip_size_larger_than_scene.size == 0
    assert chip_size_larger_than_scene.create_index().num_rows == 0


def test_base_indexer_without_statistics_says_what_to_do():
    item = load("stacchip-test__m_4207009_ne_19_060_20211024_800x1000.json")
    with pytest.raises(NotImplementedError, match="get_stats"):
        ChipIndexer(item).create_index()
