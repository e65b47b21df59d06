"""Untrusted STAC metadata (issue 11, failures 4, 6 and 7) on real COGs the tests write.

The grid is chosen within one CRS, a mask in another CRS is refused, mask values outside the
classification are nodata (not wrapped), projection fields are inherited one by one; metadata that
asks for too many chips or a huge mask fails before allocating; malformed fields raise StacchipError
subclasses that say whether a retry may help. The property-based test at the end feeds generated
malformed items through `index_item` and `read_chip` in a child process with bounded memory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from stacchip_assets.core.ids import MAX_ID_LENGTH, validate_id
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.core.stac import item_from_dict
from stacchip_assets.errors import (
    AssetGridError,
    AssetReadError,
    InvalidIdentifierError,
    InvalidItemError,
    NoProjectionInfoError,
    ResourceLimitError,
    StacchipError,
    StacSourceError,
    StorageError,
)
from stacchip_assets.index.chip_indexer import Indexer, Sentinel2Indexer
from stacchip_assets.index.item_index import ChipSettings, index_item
from stacchip_assets.io.raster import open_asset
from stacchip_assets.io.settings import read_limits
from stacchip_assets.io.storage import Storage

from tests.conftest import PROJECT
from tests.support.cogs import make_item, write_cog

X0, Y0 = 399960.0, 5500020.0


def utm(res: float, x0: float = X0, y0: float = Y0) -> Affine:
    return Affine(res, 0, x0, 0, -res, y0)


def band(tmp_path: Path, name: str, rows: int, cols: int, res: float = 10.0, crs: str = "EPSG:32631",
         x0: float = X0, y0: float = Y0, value: int = 7, dtype=np.uint16):
    data = np.full((rows, cols), value, dtype=dtype)
    return write_cog(tmp_path / f"{name}.tif", data, utm(res, x0, y0), crs=crs), (rows, cols), utm(res, x0, y0)


# -- failure 6: grid and mask validation ----------------------------------------------------------

def test_a_lonlat_asset_does_not_become_the_grid_of_a_utm_item(tmp_path):
    """Pixel areas in degrees^2 are tiny next to m^2: compared across CRSs the lon/lat asset won."""
    b04 = band(tmp_path, "b04", 768, 1280)  # 10 m: 5 x 3 chips of 256 px
    geo_path = write_cog(tmp_path / "geo.tif", np.ones((64, 64), np.uint8), Affine(0.001, 0, 3.0, 0, -0.001, 49.6), crs="EPSG:4326")
    item = make_item("mixed-crs", {"b04": b04, "aot_geo": (geo_path, (64, 64), Affine(0.001, 0, 3.0, 0, -0.001, 49.6))})
    item.assets["aot_geo"].extra_fields["proj:code"] = "EPSG:4326"
    indexer = Indexer(item)
    assert indexer.grid_asset_key == "b04"
    assert (indexer.x_size, indexer.y_size, indexer.size) == (5, 3, 15)
    assert indexer.crs.to_epsg() == 32631


def test_the_item_crs_wins_even_when_an_asset_in_another_crs_has_a_finer_grid(tmp_path):
    b04 = band(tmp_path, "b04", 512, 512, res=10.0)
    fine = band(tmp_path, "fine32", 1024, 1024, res=5.0, crs="EPSG:32632", x0=200000.0)
    item = make_item("two-utm", {"b04": b04, "fine32": fine})
    item.assets["fine32"].extra_fields["proj:code"] = "EPSG:32632"
    indexer = Indexer(item)
    assert indexer.grid_asset_key == "b04" and indexer.size == 4


def _s2_item(tmp_path: Path, scl: np.ndarray, scl_crs: str = "EPSG:32631", declared_crs: str | None = None,
             rows: int = 512, cols: int = 512):
    b04 = band(tmp_path, "b04", rows, cols)
    scl_path = write_cog(tmp_path / "scl.tif", scl, utm(20.0), crs=scl_crs)
    item = make_item("s2-item", {"b04": b04, "scl": (scl_path, scl.shape, utm(20.0))}, collection="sentinel-2-l2a")
    if declared_crs is not None:
        item.assets["scl"].extra_fields["proj:code"] = declared_crs
    return item


def test_a_mask_declared_in_another_crs_is_refused(tmp_path):
    item = _s2_item(tmp_path, np.full((256, 256), 4, np.uint8), scl_crs="EPSG:32632", declared_crs="EPSG:32632")
    indexer = Indexer(item)
    assert isinstance(indexer, Sentinel2Indexer) and indexer.grid_asset_key == "b04"
    with pytest.raises(AssetGridError, match=r"item 's2-item', asset 'scl': the mask's CRS in the STAC metadata .*UTM zone 32N.* is not the chip grid's .*UTM zone 31N"):
        indexer.create_index()


def test_a_mask_file_in_another_crs_than_its_metadata_is_refused(tmp_path):
    """The item says nothing about the mask's CRS (it inherits the item's), the file says 32632."""
    item = _s2_item(tmp_path, np.full((256, 256), 4, np.uint8), scl_crs="EPSG:32632")
    with pytest.raises(AssetGridError, match=r"asset 'scl': the mask's CRS in the file .*UTM zone 32N"):
        Indexer(item).create_index()


def test_scl_values_outside_the_classification_are_nodata_not_wrapped(tmp_path, caplog):
    """A uint16 SCL: 256 wrapped to 0 (nodata) and 264 to 8 (cloud) under the old uint8 cast."""
    scl = np.full((256, 256), 4, np.uint16)  # vegetation
    scl[:128, :128] = 264  # chip (0, 0): out of domain -> nodata (was: 100 % cloud)
    scl[:128, 128:] = 256  # chip (1, 0): out of domain -> nodata
    scl[128:, :128] = 9  # chip (0, 1): cloud high probability
    scl[128:192, 128:] = 300  # chip (1, 1): half out of domain
    item = _s2_item(tmp_path, scl)
    with caplog.at_level(logging.WARNING, logger="stacchip_assets.index.chip_indexer"):
        table = Indexer(item, chip_max_nodata=1.0).create_index()
    got = {(r["chip_index_x"], r["chip_index_y"]): (r["cloud_cover_percentage"], r["nodata_percentage"]) for r in table.to_pylist()}
    assert got == {(0, 0): (0.0, 1.0), (1, 0): (0.0, 1.0), (0, 1): (1.0, 0.0), (1, 1): (0.0, 0.5)}
    warnings = [r.getMessage() for r in caplog.records if "outside the classification's domain" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{2 * 128 * 128 + 64 * 128} mask values" in warnings[0] and "(256.0..300.0)" in warnings[0]
    assert "s2-item" in warnings[0] and "'scl'" in warnings[0]


def test_an_asset_with_its_own_transform_inherits_the_item_shape(tmp_path):
    """Planetary Computer style: proj:shape at item level, proj:transform on each asset."""
    path, shape, transform = band(tmp_path, "b04", 512, 768)
    item = make_item("pc-style", {"b04": (path, shape, transform)})
    del item.assets["b04"].extra_fields["proj:shape"]
    item.properties["proj:shape"] = [512, 768]
    indexer = Indexer(item)
    assert indexer.grid_asset_key == "b04" and indexer.shape == [512, 768] and indexer.size == 6
    result = index_item(item, Storage(tmp_path / "base"), ChipSettings(chip_max_nodata=1.0))
    assert result.chips_kept == 6


def test_a_coarser_mask_with_its_own_transform_under_an_item_level_shape_is_read_on_its_own_grid(tmp_path):
    """The 20 m SCL carries its proj:transform, the item the 10 m proj:shape: the mask is checked on its
    own field (the transform) and read on the file's grid; the 10 m band stays the grid."""
    scl = np.full((256, 256), 4, np.uint8)
    scl[:128, :] = 9  # chip row 0 cloudy
    item = _s2_item(tmp_path, scl)
    for key in ("b04", "scl"):
        del item.assets[key].extra_fields["proj:shape"]
    item.properties["proj:shape"] = [512, 512]
    indexer = Indexer(item)
    assert indexer.grid_asset_key == "b04" and indexer.size == 4
    got = {(r["chip_index_x"], r["chip_index_y"]): r["cloud_cover_percentage"] for r in indexer.create_index().to_pylist()}
    assert got == {(0, 0): 1.0, (1, 0): 1.0, (0, 1): 0.0, (1, 1): 0.0}
    # a transform the file contradicts is still caught
    item.assets["scl"].extra_fields["proj:transform"] = list(utm(20.0, x0=X0 + 100))[:6]
    with pytest.raises(AssetGridError, match="asset 'scl': proj:transform .* disagrees with the file's geotransform"):
        Indexer(item).create_index()


# -- failure 4: resource limits ---------------------------------------------------------------------

def test_a_huge_proj_shape_is_refused_before_allocating(tmp_path):
    path, _, transform = band(tmp_path, "b04", 256, 256)
    item = make_item("huge-shape", {"b04": (path, (10**7, 10**7), transform)})
    storage = Storage(tmp_path / "base")
    with pytest.raises(ResourceLimitError, match=r"item 'huge-shape', asset 'b04': the 10000000x10000000 px grid gives "
                       r"39062x39062 = 1525839844 chips of 256 px, more than 100000 \(limit STACCHIP_MAX_CHIPS_PER_ITEM\)"):
        index_item(item, storage)
    assert not (tmp_path / "base").exists() or not any((tmp_path / "base").rglob("*.parquet"))
    # the limit is configuration: a smaller one refuses a normal item too
    small_item = make_item("normal", {"b04": band(tmp_path, "b04b", 512, 512)})
    with pytest.raises(ResourceLimitError, match="more than 3 "):
        index_item(small_item, storage, limits=ReadLimits(max_chips_per_item=3))


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STACCHIP_MAX_CHIPS_PER_ITEM", "12")
    monkeypatch.setenv("STACCHIP_MAX_MASK_PIXELS", "345")
    limits = read_limits()
    assert (limits.max_chips_per_item, limits.max_mask_pixels) == (12, 345)


SPARSE_SIDE = 100_000


def write_sparse_scl(path: Path) -> Path:
    """A tiled GeoTIFF declaring 100,000 x 100,000 px with only its first 512 x 512 block written."""
    profile = dict(driver="GTiff", width=SPARSE_SIDE, height=SPARSE_SIDE, count=1, dtype="uint8", crs="EPSG:32631",
                   transform=utm(20.0), tiled=True, blockxsize=512, blockysize=512, compress="DEFLATE",
                   sparse_ok=True, bigtiff="YES")
    block = np.full((512, 512), 4, np.uint8)
    block[:64, :] = 9  # the top half of chip row 0 is cloud
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(block, 1, window=Window(0, 0, 512, 512))
    return path


SPARSE_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a safety net: the old whole read needed 10 GB
from pathlib import Path
from tests.unit.index.test_untrusted_metadata import sparse_mask_item
from stacchip_assets.index.chip_indexer import Indexer
item = sparse_mask_item(Path(sys.argv[1]))
rows = Indexer(item, chip_max_nodata=1.0).create_index().to_pylist()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "rows": [[r["chip_index_x"], r["chip_index_y"], r["cloud_cover_percentage"], r["nodata_percentage"]] for r in rows]}))
"""


def sparse_mask_item(tmp_path: Path) -> pystac.Item:
    b04 = band(tmp_path, "b04", 512, 512)
    scl = tmp_path / "scl_sparse.tif"
    if not scl.exists():
        write_sparse_scl(scl)
    return make_item("sparse-mask", {"b04": b04, "scl": (scl, (SPARSE_SIDE, SPARSE_SIDE), utm(20.0))},
                     collection="sentinel-2-l2a")


def test_a_sparse_mask_declaring_100000_px_is_read_by_windows(tmp_path):
    write_sparse_scl(tmp_path / "scl_sparse.tif")
    size = (tmp_path / "scl_sparse.tif").stat().st_size
    assert size < 2 * 2**20, size  # a small file declaring 10^10 pixels
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    out = subprocess.run([sys.executable, "-c", SPARSE_CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n[sparse mask] file {size} bytes declaring {SPARSE_SIDE}^2 px: peak RSS {report['peak'] / 2**20:.0f} MiB")
    assert report["peak"] < 2 * 2**30
    # chip row 0: 128 mask rows of which 64 are cloud; chip row 1: clear
    assert sorted(map(tuple, report["rows"])) == [(0, 0, 0.5, 0.0), (0, 1, 0.0, 0.0), (1, 0, 0.5, 0.0), (1, 1, 0.0, 0.0)]


def test_a_mask_band_above_the_pixel_limit_is_refused_naming_the_limit(tmp_path):
    item = sparse_mask_item(tmp_path)
    indexer = Indexer(item, limits=ReadLimits(max_mask_pixels=1000))
    with pytest.raises(ResourceLimitError, match=r"item 'sparse-mask', asset 'scl': a band of 128x256 mask pixels .* more than "
                       r"1000 pixels \(limit STACCHIP_MAX_MASK_PIXELS\)"):
        indexer.create_index()


# -- failure 7: the error contract --------------------------------------------------------------------

MALFORMED = [
    ("proj:transform", [10.0, 0.0, X0, 0.0, -10.0, float("nan")], "NaN or infinite"),
    ("proj:transform", [10.0, 0.0, float("inf"), 0.0, -10.0, Y0], "NaN or infinite"),
    ("proj:transform", [10.0, 0.0, X0, 0.0, -10.0], "6 or 9 numbers"),
    ("proj:transform", [10.0, 0.0, X0, 0.0, -10.0, Y0, 0.0], "6 or 9 numbers"),
    ("proj:transform", ["10", "0", "x", "0", "-10", "y"], "6 or 9 numbers"),
    ("proj:transform", [0.0, 0.0, X0, 0.0, 0.0, Y0], "degenerate"),
    ("proj:transform", 1e308, "6 or 9 numbers"),
    ("proj:shape", ["512", "512"], "two positive integers"),
    ("proj:shape", [512], "two positive integers"),
    ("proj:shape", [512, -3], "two positive integers"),
    ("proj:shape", [512.5, 512], "two positive integers"),
    ("proj:shape", [float("inf"), 512], "two positive integers"),
    ("proj:shape", {"rows": 1}, "two positive integers"),
]


@pytest.mark.parametrize(("field", "value", "message"), MALFORMED, ids=[f"{f}={v!r}"[:50] for f, v, _ in MALFORMED])
def test_malformed_projection_fields_are_invalid_item_errors(tmp_path, field, value, message):
    item = make_item("malformed", {"b04": band(tmp_path, "b04", 512, 512)})
    item.assets["b04"].extra_fields[field] = value
    with pytest.raises(InvalidItemError, match=rf"item 'malformed', asset 'b04': {field} .*{message}") as error:
        index_item(item, Storage(tmp_path / "base"))
    assert error.value.transient is False
    assert not (tmp_path / "base").exists() or not list((tmp_path / "base").rglob("*.*"))


@pytest.mark.parametrize(("bbox", "message"), [([0, 0, 1], "4 or 6 numbers"), ([0, float("nan"), 1, 1], "NaN"),
                                                (["a", 0, 1, 1], "4 or 6 numbers"), ([0, 5, 1, 1], "south")])
def test_malformed_bbox_is_an_invalid_item_error(tmp_path, bbox, message):
    item = make_item("bad-bbox", {"b04": band(tmp_path, "b04", 512, 512)})
    item.geometry = None
    item.bbox = bbox
    with pytest.raises(InvalidItemError, match=rf"item 'bad-bbox': bbox .*{message}"):
        index_item(item, Storage(tmp_path / "base"))


@pytest.mark.parametrize("value", ["2023-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "yesterday", 12345])
def test_malformed_datetimes_are_invalid_item_errors(tmp_path, value):
    item = make_item("bad-time", {"b04": band(tmp_path, "b04", 512, 512)})
    data = item.to_dict(include_self_link=False)
    data["properties"]["datetime"] = value
    with pytest.raises(InvalidItemError, match=r"item 'bad-time': not a valid STAC item"):
        item_from_dict(data)
    # as a range item's start (pystac does not parse it on load)
    item.datetime = None
    item.properties["start_datetime"] = value
    item.properties["end_datetime"] = "2024-01-01T00:00:00Z"
    with pytest.raises(InvalidItemError, match=r"item 'bad-time': "):  # whichever reads it first: updated's fallback
        index_item(item, Storage(tmp_path / "base"))
    item.properties["updated"] = "2024-05-01T00:00:00Z"
    with pytest.raises(InvalidItemError, match=r"item 'bad-time': start_datetime .* is not an RFC 3339 time"):
        index_item(item, Storage(tmp_path / "base"))


@pytest.mark.parametrize("value", ["abc\n", "x" * (MAX_ID_LENGTH + 1), "x" * 255, "ok\nsecond"])
def test_ids_that_would_fail_later_are_refused_up_front(value):
    with pytest.raises(InvalidIdentifierError, match="cannot be used as a path segment") as error:
        validate_id(value)
    assert error.value.transient is False


def test_the_longest_id_accepted_fits_every_file_name_of_the_storage(tmp_path):
    item_id = "x" * MAX_ID_LENGTH
    item = make_item(item_id, {"b04": band(tmp_path, "b04", 512, 512)})
    result = index_item(item, Storage(tmp_path / "base"), ChipSettings(chip_max_nodata=1.0))
    assert result.chips_kept == 4
    names = {p.name for p in (tmp_path / "base").rglob("*") if item_id in p.name}
    assert f"quicklook_{item_id}.png" in names and f"index_{item_id}.parquet" in names
    assert max(len(n) for n in names) == 255


def test_errors_say_whether_a_retry_may_help(tmp_path):
    # a missing file: permanent
    item = make_item("gone", {"b04": (tmp_path / "missing.tif", (512, 512), utm(10.0))})
    with pytest.raises(AssetReadError) as missing:
        with open_asset(str(tmp_path / "missing.tif"), item_id=item.id, asset_key="b04"):
            pass
    assert missing.value.transient is False
    assert AssetReadError("cannot read x: HTTP response code: 503").transient is True
    assert AssetReadError("cannot open x: Operation timed out after 1001 milliseconds").transient is True
    assert AssetReadError("cannot open x: HTTP response code: 404").transient is False
    assert StorageError("S3 refused the credentials (SignatureDoesNotMatch)").transient is False
    assert StorageError("cannot write x: connection reset").transient is True
    assert StacSourceError("the STAC API answered 502").transient is True
    for cls in (InvalidItemError, NoProjectionInfoError, AssetGridError, InvalidIdentifierError):
        assert cls("x").transient is False
    assert ResourceLimitError("x", limit="L").transient is False
    assert issubclass(ResourceLimitError, StacchipError) and issubclass(InvalidItemError, StacchipError)


# -- failure 7 in Dagster: bad metadata is not retried ------------------------------------------------

from tests.dagster.test_backfill import edit_item_json, partition_keys, small  # noqa: E402,F401 (the fixture is used by name)


def _broken_transform(data: dict) -> None:
    for asset in data["assets"].values():
        if "proj:transform" in asset:
            asset["proj:transform"] = asset["proj:transform"][:5]  # 5 elements
    if "proj:transform" in data["properties"]:
        data["properties"]["proj:transform"] = data["properties"]["proj:transform"][:5]


def test_a_run_over_an_item_with_a_malformed_transform_fails_at_once_without_retries(small):  # noqa: F811
    key = partition_keys(small["grid"])[0]
    edit_item_json(small, key, _broken_transform)
    result = dg.materialize([small["assets"]["chip_index"]], instance=small["instance"], resources=small["resources"],
                            partition_key=key, raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    data = failure.event_specific_data
    assert "InvalidItemError" in data.user_failure_data.description
    assert "proj:transform must be a list of 6 or 9 numbers" in data.user_failure_data.description
    assert data.user_failure_data.metadata["transient"].value is False


def test_a_run_whose_item_is_gone_is_retried_as_transient(small):  # noqa: F811
    """The counterpart: a StacSourceError (the item vanished from the catalog) may pass, so it is retried."""
    key = partition_keys(small["grid"])[0]
    item_id = key.split("/", 1)[1]
    (small["catalog"].parent / key.split("/")[0] / item_id / f"{item_id}.json").unlink()
    result = dg.materialize([small["assets"]["chip_index"]], instance=small["instance"], resources=small["resources"],
                            partition_key=key, raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    assert not result.success
    assert len([e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]) == 2


# -- acceptance 2: generated malformed items through index_item and read_chip -------------------------

def property_run(folder: Path, max_examples: int) -> dict:
    """Run the property in this process (a child of the test): every generated item, through
    `item_from_dict` + `index_item` and through `read_chip` (from its JSON file), raises nothing but
    StacchipError subclasses, each call within 30 s (SIGALRM). Returns what was seen."""
    import collections
    import resource
    import signal

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from stacchip_assets.index.reader import read_chip
    from stacchip_assets.io.local_files import HrefPolicy

    folder.mkdir(parents=True, exist_ok=True)
    b04 = band(folder, "b04", 512, 512)
    scl = write_cog(folder / "scl.tif", np.full((256, 256), 4, np.uint8), utm(20.0))
    base = make_item("prop-item", {"b04": b04, "scl": (scl, (256, 256), utm(20.0))}, collection="sentinel-2-l2a")
    base.properties["updated"] = "2024-05-18T00:00:00Z"
    base_dict = base.to_dict(include_self_link=False)
    policy = HrefPolicy(local_roots=(str(folder),))
    seen: collections.Counter = collections.Counter()

    number = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0, 1, -1, 255, 256, 10**7, 10**12, 2**63, 1e308, -0.0]))
    scalar = st.one_of(number, st.text(max_size=8), st.none(), st.booleans())
    shape = st.one_of(st.lists(st.one_of(st.integers(-10, 10**8), scalar), max_size=4), scalar,
                      st.tuples(st.integers(1, 10**8), st.integers(1, 10**8)).map(list),
                      st.sampled_from([[10**7, 10**7], [10**5, 10**5], [2**31, 1], [80000, 80000]]))
    res = st.one_of(st.floats(1e-12, 1e6), st.sampled_from([10.0, 20.0, 1e-300, 1e300]))
    transform = st.one_of(
        st.lists(st.one_of(st.floats(-1e10, 1e10), scalar), max_size=10), scalar,
        st.tuples(res, st.floats(allow_nan=True, allow_infinity=True)).map(lambda t: [t[0], 0.0, X0, 0.0, -t[0], t[1]]),
    )
    bbox = st.one_of(st.lists(scalar, max_size=7), st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4), scalar)
    when = st.one_of(st.text(max_size=30), number, st.none(), st.sampled_from(
        ["2023-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
         "2024-05-17T10:56:21Z", "2024-13-01T00:00:00Z", "99999-01-01T00:00:00Z"]))
    ident = st.one_of(st.text(max_size=300), number, st.none(), st.sampled_from(["a" * 242, "ok\n", "../x", "a" * 241, ""]))
    crs = st.one_of(st.sampled_from(["EPSG:4326", "EPSG:999999", "EPSG:32632", "foo", ""]), number)
    level = st.sampled_from(["item", "b04", "scl"])
    mutation = st.one_of(
        st.tuples(st.just("proj:shape"), level, shape), st.tuples(st.just("proj:transform"), level, transform),
        st.tuples(st.just("proj:code"), level, crs), st.tuples(st.just("bbox"), st.just("item"), bbox),
        st.tuples(st.just("datetime"), st.just("item"), when), st.tuples(st.just("start_datetime"), st.just("item"), when),
        st.tuples(st.just("updated"), st.just("item"), when), st.tuples(st.just("id"), st.just("item"), ident),
    )

    def mutate(changes) -> dict:
        data = json.loads(json.dumps(base_dict))
        for field, where, value in changes:
            if field in ("bbox", "id"):
                data[field] = value
                if field == "bbox":
                    data["geometry"] = None
            elif where == "item":
                data["properties"][field] = value
            else:
                data["assets"][where][field] = value
        return data

    def guarded(what: str, call) -> None:
        signal.alarm(30)  # a hang or a runaway loop fails the property, it does not stall the test
        try:
            call()
            seen[f"{what}: ok"] += 1
        except StacchipError as exc:
            seen[f"{what}: {type(exc).__name__}"] += 1
        finally:
            signal.alarm(0)

    def on_alarm(signum, frame):
        raise TimeoutError("a call took more than 30 s")

    signal.signal(signal.SIGALRM, on_alarm)
    counter = iter(range(10**9))

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(mutation, min_size=1, max_size=3))
    def check(changes) -> None:
        data = mutate(changes)
        run = folder / f"run{next(counter)}"
        run.mkdir()
        storage = Storage(run / "base")

        def index() -> None:
            index_item(item_from_dict(data), storage, ChipSettings(chip_max_nodata=1.0), href_policy=policy)

        guarded("index_item", index)
        item_json = run / "item.json"
        item_json.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
        row = {"item_href": str(item_json), "chip_size": 256, "chip_stride": 256, "chip_index_x": 1, "chip_index_y": 1,
               "collection": "sentinel-2-l2a", "item_id": str(data.get("id")), "chipid": "x"}
        guarded("read_chip", lambda: read_chip(row, href_policy=policy))

    check()
    return {"seen": dict(seen), "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


PROPERTY_CHILD = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a safety net for the machine; the bound is checked below
from tests.unit.index.test_untrusted_metadata import property_run
print(json.dumps(property_run(Path(sys.argv[1]), int(sys.argv[2]))))
"""


def test_generated_malformed_items_raise_only_stacchip_errors_in_bounded_memory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    out = subprocess.run([sys.executable, "-c", PROPERTY_CHILD, str(tmp_path / "prop"), "150"], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    seen = report["seen"]
    print(f"\n[property] peak RSS {report['peak'] / 2**20:.0f} MiB; outcomes {json.dumps(seen, sort_keys=True)}")
    assert report["peak"] < 2 * 2**30
    assert sum(n for k, n in seen.items() if k.startswith("index_item")) >= 150
    # the generator reaches the checks this issue added (not only the id check at the door)
    reached = {k.split(": ")[1] for k in seen}
    assert {"InvalidItemError", "InvalidIdentifierError", "ResourceLimitError"} <= reached, seen
