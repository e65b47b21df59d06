"""Grid invariants over random grids (hypothesis): tiling, counts, footprint validity and accuracy."""

from __future__ import annotations

import numpy as np
import pyproj
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacchip_assets.core.grid import WGS84, ChipGrid

CRS_CHOICES = ["utm-n", "utm-s", "EPSG:3031", "EPSG:3413", "EPSG:4326"]


@st.composite
def grids(draw):
    kind = draw(st.sampled_from(CRS_CHOICES))
    rows = draw(st.integers(1, 3000))
    cols = draw(st.integers(1, 3000))
    if kind.startswith("utm"):
        zone = draw(st.integers(1, 60))
        crs = pyproj.CRS.from_epsg((32600 if kind == "utm-n" else 32700) + zone)
        res = draw(st.sampled_from([0.3, 0.6, 10.0, 20.0, 30.0, 60.0]))
        x0 = draw(st.floats(150_000, 850_000 - cols * res, allow_nan=False)) if cols * res < 700_000 else 150_000.0
        y0 = draw(st.floats(1_000_000, 8_000_000, allow_nan=False))
    elif kind == "EPSG:4326":
        crs = pyproj.CRS.from_epsg(4326)
        res = draw(st.sampled_from([1 / 3600, 1 / 1200, 0.001, 0.01]))
        x0 = draw(st.floats(-180.5, 180.0 - cols * res, allow_nan=False))
        y0 = draw(st.floats(-80.0 + rows * res, 80.0, allow_nan=False))
    else:
        crs = pyproj.CRS.from_user_input(kind)
        res = draw(st.sampled_from([10.0, 30.0, 100.0]))
        x0 = draw(st.floats(-2_500_000, 2_500_000, allow_nan=False))
        y0 = draw(st.floats(-2_500_000, 2_500_000, allow_nan=False))
    chip_size = draw(st.sampled_from([16, 32, 64, 100, 128, 256, 512]))
    stride = draw(st.one_of(st.none(), st.integers(max(1, chip_size // 4), chip_size)))
    pad = draw(st.booleans())
    return ChipGrid(
        shape=(rows, cols), transform=Affine(res, 0, x0, 0, -res, y0), crs=crs,
        chip_size=chip_size, stride=stride, pad_edges=pad,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_chip_counts_cover_the_raster_as_promised(grid: ChipGrid):
    rows, cols = grid.shape
    for count, length in ((grid.x_size, cols), (grid.y_size, rows)):
        if count == 0:
            assert length < grid.chip_size and not grid.pad_edges or length == 0
            continue
        last_end = (count - 1) * grid.step + grid.chip_size
        if grid.pad_edges:
            assert last_end >= length and (count - 2) * grid.step + grid.chip_size < length if count > 1 else True
        else:
            assert last_end <= length < last_end + grid.step  # whole chips only, none missed


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_chips_tile_without_gaps_or_overlap(grid: ChipGrid):
    tiling = ChipGrid(grid.shape, grid.transform, grid.crs, grid.chip_size, None, grid.pad_edges)
    if tiling.size == 0:
        return
    xs, ys = tiling.positions()
    cx, cy = tiling.corners(xs, ys)  # (n, 4): top-left, bottom-left, bottom-right, top-right
    boxes = shapely.box(cx.min(axis=1), cy.min(axis=1), cx.max(axis=1), cy.max(axis=1))
    union = shapely.union_all(boxes)
    res = tiling.transform.a
    expected_area = tiling.size * (tiling.chip_size * res) ** 2
    assert np.isclose(shapely.area(boxes).sum(), expected_area, rtol=1e-9)
    assert np.isclose(union.area, expected_area, rtol=1e-6)  # equal sums: no overlap, no gap
    # Neighbours share edges exactly: the east edge of (x, y) is the west edge of (x + 1, y).
    east = cx[:, 2].reshape(tiling.y_size, tiling.x_size)
    west = cx[:, 0].reshape(tiling.y_size, tiling.x_size)
    np.testing.assert_array_equal(east[:, :-1], west[:, 1:])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_footprints_are_valid_and_match_the_corners(grid: ChipGrid):
    if grid.size == 0:
        return
    xs, ys = grid.positions()
    pick = np.unique(np.linspace(0, grid.size - 1, min(grid.size, 25)).astype(int))
    footprints = grid.footprints(xs[pick], ys[pick])
    assert shapely.is_valid(footprints).all()
    to_wgs84 = pyproj.Transformer.from_crs(grid.crs, WGS84, always_xy=True)
    cx, cy = grid.corners(xs[pick], ys[pick])
    on_a_pole = np.zeros(len(pick), dtype=bool)
    for _, touching in grid.pole_chips(cx, cy):
        on_a_pole |= touching
    for polygon, px, py, polar in zip(footprints, cx, cy, on_a_pole):
        if polar:
            lon, lat = to_wgs84.transform(px, py)
            assert polygon.bounds[0] == -180 and polygon.bounds[2] == 180  # the polar cap band
            assert all(polygon.covers(shapely.Point(p)) for p in zip(np.clip(lon, -180, 180), lat))
            continue
        coords = np.array(polygon.exterior.coords)[:-1]
        lon, lat = to_wgs84.transform(px, py)
        for corner in zip(lon, lat):
            delta = np.abs(coords - corner)
            delta[:, 0] = np.minimum(delta[:, 0], np.abs(delta[:, 0] - 360))  # antimeridian shift
            assert delta.max(axis=1).min() < 1e-7
        minx, _, maxx, _ = polygon.bounds
        assert maxx - minx < 180  # never wraps around the globe


def test_a_chip_over_the_south_pole_is_the_polar_cap_band():
    grid = ChipGrid((512, 512), Affine(100.0, 0, -25_600.0, 0, -100.0, 25_600.0), pyproj.CRS.from_epsg(3031), 256)
    footprints = grid.footprints(*grid.positions())
    assert shapely.is_valid(footprints).all()
    for polygon in footprints:  # every chip has the pole on a corner
        minx, miny, maxx, maxy = polygon.bounds
        assert (minx, miny, maxx) == (-180.0, -90.0, 180.0) and -89.9 < maxy < -89.5
    far = ChipGrid((256, 256), Affine(100.0, 0, 1_000_000.0, 0, -100.0, 0.0), pyproj.CRS.from_epsg(3031), 256)
    (polygon,) = far.footprints(*far.positions())
    assert polygon.bounds[2] - polygon.bounds[0] < 5  # away from the pole: an ordinary small footprint
