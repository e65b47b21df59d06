"""The sample-data generator writes real COGs and a consistent static STAC catalog, deterministically
and atomically. Values are checked on the files themselves (rasterio) and on the raw item JSON."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
from datetime import datetime

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import CRS, Transformer
from rasterio.enums import Compression

from stacchip_assets import sample_data
from stacchip_assets.demo import sensors_s2
from stacchip_assets.demo.sample_data import (
    SAMPLE_COLLECTIONS,
    SAMPLE_DATA_VERSION,
    default_sample_dir,
    ensure_sample_catalog,
    generate_sample_catalog,
    sample_item_paths,
)
from stacchip_assets.io import atomic

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
S2_CLOUD = (1, 3, 8, 9, 10)


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_sample_catalog(tmp_path_factory.mktemp("sample") / "catalog")


@pytest.fixture(scope="module")
def raw_items(catalog_path: pathlib.Path) -> dict[str, dict]:
    """Item id -> item JSON as written (pystac would migrate projection v1.1 fields on read)."""
    return {i: json.loads(p.read_text()) for i, p in sample_item_paths(catalog_path).items()}


def _item_dir(catalog_path: pathlib.Path, item_id: str) -> pathlib.Path:
    return sample_item_paths(catalog_path)[item_id].parent


def _asset_path(catalog_path: pathlib.Path, item: dict, key: str) -> pathlib.Path:
    return (_item_dir(catalog_path, item["id"]) / item["assets"][key]["href"]).resolve()


def _read(catalog_path: pathlib.Path, item: dict, key: str) -> np.ndarray:
    with rasterio.open(_asset_path(catalog_path, item, key)) as src:
        return src.read(1)


def _item_crs(item: dict) -> CRS:
    props = item["properties"]
    if props.get("proj:code"):
        return CRS.from_user_input(props["proj:code"])
    if props.get("proj:epsg") is not None:
        return CRS.from_epsg(props["proj:epsg"])
    return CRS.from_wkt(props["proj:wkt2"])


def _digest_tree(root: pathlib.Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _chip_fractions(mask: np.ndarray, chip: int) -> np.ndarray:
    rows, cols = mask.shape[0] // chip, mask.shape[1] // chip
    trimmed = mask[: rows * chip, : cols * chip].reshape(rows, chip, cols, chip)
    return trimmed.mean(axis=(1, 3))


# ----------------------------------------------------------------------------- catalog structure


def test_catalog_yields_expected_items(catalog_path: pathlib.Path) -> None:
    assert catalog_path.name == "catalog.json" and catalog_path.is_file()
    catalog = pystac.Catalog.from_file(str(catalog_path))
    found: dict[str, list[str]] = {}
    for item in catalog.get_items(recursive=True):
        found.setdefault(item.collection_id, []).append(item.id)
    assert found == SAMPLE_COLLECTIONS
    assert {c.id for c in catalog.get_children()} == set(SAMPLE_COLLECTIONS)
    assert set(sample_item_paths(catalog_path)) == {i for ids in SAMPLE_COLLECTIONS.values() for i in ids}
    for ids in SAMPLE_COLLECTIONS.values():
        for item_id in ids:
            assert "/" not in item_id and "\\" not in item_id and ".." not in item_id


def test_catalog_is_self_contained_with_relative_hrefs(catalog_path: pathlib.Path) -> None:
    for path in catalog_path.parent.rglob("*.json"):
        if path.name.startswith("."):
            continue
        doc = json.loads(path.read_text())
        for link in doc.get("links", []):
            assert link["rel"] != "self"
            assert not link["href"].startswith(("/", "file:", "http")), (path, link)
        for asset in doc.get("assets", {}).values():
            assert asset["href"].startswith("./"), (path, asset)
            assert (path.parent / asset["href"]).is_file()


def test_collections_extent_and_description(catalog_path: pathlib.Path, raw_items: dict) -> None:
    catalog = pystac.Catalog.from_file(str(catalog_path))
    for collection in catalog.get_children():
        assert isinstance(collection, pystac.Collection)
        assert "synthetic" in collection.description.lower()
        assert collection.license
        items = list(collection.get_items())
        (bbox,) = collection.extent.spatial.bboxes
        for item in items:
            assert bbox[0] <= item.bbox[0] and bbox[1] <= item.bbox[1]
            assert bbox[2] >= item.bbox[2] and bbox[3] >= item.bbox[3]
            (interval,) = collection.extent.temporal.intervals
            assert interval[0] <= item.datetime <= interval[1]


# ----------------------------------------------------------------------------- items and assets


def test_item_properties(raw_items: dict) -> None:
    for item in raw_items.values():
        props = item["properties"]
        dt = datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
        assert dt.utcoffset() is not None and dt.hour != 12
        datetime.fromisoformat(props["updated"].replace("Z", "+00:00"))
        assert 0.0 <= props["eo:cloud_cover"] <= 100.0
        for key, asset in item["assets"].items():
            assert asset.get("roles"), (item["id"], key)
            if "thumbnail" not in asset["roles"]:
                assert asset["type"] == COG_TYPE


def test_geometry_is_grid_footprint(raw_items: dict) -> None:
    for item in raw_items.values():
        props = item["properties"]
        if "proj:transform" in props:
            shape, transform = props["proj:shape"], props["proj:transform"]
        else:  # asset-level grids (S2): the item footprint is the finest asset's grid
            finest = min((a for a in item["assets"].values() if "proj:transform" in a),
                         key=lambda a: a["proj:transform"][0])
            shape, transform = finest["proj:shape"], finest["proj:transform"]
        a, b, c, d, e, f = transform
        rows, cols = shape
        corners_x = [c, c + a * cols, c + a * cols, c]
        corners_y = [f, f, f + e * rows, f + e * rows]
        lon, lat = Transformer.from_crs(_item_crs(item), 4326, always_xy=True).transform(corners_x, corners_y)
        ring = np.asarray(item["geometry"]["coordinates"][0])
        assert item["geometry"]["type"] == "Polygon" and np.allclose(ring[0], ring[-1])
        for x, y in zip(lon, lat, strict=True):
            assert np.min(np.hypot(ring[:, 0] - x, ring[:, 1] - y)) < 1e-9
        west, south, east, north = item["bbox"]
        assert west == pytest.approx(ring[:, 0].min()) and east == pytest.approx(ring[:, 0].max())
        assert south == pytest.approx(ring[:, 1].min()) and north == pytest.approx(ring[:, 1].max())
        # counter-clockwise exterior ring (GeoJSON)
        area2 = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area2 > 0


def test_every_raster_asset_is_a_cog_matching_its_stac_fields(catalog_path: pathlib.Path, raw_items: dict) -> None:
    checked = 0
    for item in raw_items.values():
        props = item["properties"]
        item_crs = _item_crs(item)
        for key, asset in item["assets"].items():
            if asset["type"] != COG_TYPE:
                continue
            with rasterio.open(_asset_path(catalog_path, item, key)) as src:
                assert src.driver == "GTiff"
                assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                assert src.profile["tiled"] and set(src.block_shapes) == {(256, 256)}
                assert src.compression == Compression.deflate
                for band in range(1, src.count + 1):
                    assert src.overviews(band), (item["id"], key)
                shape = asset.get("proj:shape", props.get("proj:shape"))
                transform = asset.get("proj:transform", props.get("proj:transform"))
                assert [src.height, src.width] == shape, (item["id"], key)
                assert list(src.transform)[:6] == transform, (item["id"], key)
                assert CRS.from_user_input(src.crs).equals(item_crs), (item["id"], key)
                bands = asset["raster:bands"]
                assert len(bands) == src.count
                for i, band in enumerate(bands):
                    assert src.dtypes[i] == band["data_type"]
                    assert band["spatial_resolution"] == pytest.approx(abs(transform[0]))
                    if "nodata" in band:
                        assert src.nodata == band["nodata"]
                    else:
                        assert src.nodata is None
                data = src.read(1)
                assert np.unique(data).size > 10, (item["id"], key)  # never a constant band
            checked += 1
    assert checked == 3 * 8 + 7 + 1 + 2 + 8


def test_thumbnails_are_pngs(catalog_path: pathlib.Path, raw_items: dict) -> None:
    for item in raw_items.values():
        thumb = item["assets"]["thumbnail"]
        assert thumb["roles"] == ["thumbnail"] and thumb["type"] == "image/png"
        assert "proj:shape" not in thumb and "raster:bands" not in thumb
        path = _asset_path(catalog_path, item, "thumbnail")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not path.with_name(path.name + ".aux.xml").exists()


# ----------------------------------------------------------------------------- Sentinel-2


def test_s2_layout(raw_items: dict) -> None:
    items = [raw_items[i] for i in SAMPLE_COLLECTIONS["sentinel-2-l2a"]]
    sizes = {"blue": 1080, "green": 1080, "red": 1080, "nir": 1080, "rededge1": 540, "swir16": 540,
             "coastal": 180, "scl": 540}
    for item in items:
        props = item["properties"]
        assert props["proj:code"] == "EPSG:32631" and "proj:epsg" not in props
        assert sample_data.PROJ_V2 in item["stac_extensions"]
        assert props["grid:code"] == f"MGRS-{props['s2:mgrs_tile']}"
        origin = {"31UDQ": (399960.0, 5500020.0), "31UEQ": (499980.0, 5500020.0)}[props["s2:mgrs_tile"]]
        for key, size in sizes.items():
            asset = item["assets"][key]
            res = 10.0 * 1080 / size
            assert asset["proj:shape"] == [size, size]
            assert asset["proj:transform"] == [res, 0.0, origin[0], 0.0, -res, origin[1]]
            assert asset["raster:bands"][0]["nodata"] == 0
        assert item["assets"]["scl"]["raster:bands"][0]["data_type"] == "uint8"
    udq = [i for i in items if i["properties"]["s2:mgrs_tile"] == "31UDQ"]
    assert len(udq) == 2
    quarters = {(d.year, (d.month - 1) // 3) for d in
                (datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")) for i in udq)}
    assert len(quarters) == 1
    covers = [i["properties"]["eo:cloud_cover"] for i in items]
    assert len(set(covers)) == 3


def test_s2_scl_classes_and_chip_statistics(catalog_path: pathlib.Path, raw_items: dict) -> None:
    for item_id in SAMPLE_COLLECTIONS["sentinel-2-l2a"]:
        item = raw_items[item_id]
        scl = _read(catalog_path, item, "scl")
        classes = set(np.unique(scl).tolist())
        assert {0, 1, 3, 8, 9, 10} <= classes and {4, 5, 6, 7, 11} <= classes
        nodata = _chip_fractions(scl == 0, 128)  # 256 px chips of the 10 m grid
        cloud = _chip_fractions(np.isin(scl, S2_CLOUD), 128)
        assert nodata.shape == (4, 4)
        assert (nodata > 0.5).any(), item_id  # some chips are dropped
        assert ((nodata > 0) & (nodata <= 0.5)).any(), item_id  # some are partially nodata
        kept = nodata <= 0.5
        assert cloud[kept].min() == 0.0 and cloud[kept].max() == 1.0, item_id
        assert len({round(v, 3) for v in cloud[kept]}) >= 6  # fractions vary
        # reflectance is 0 exactly where SCL is 0, at every resolution
        scl10 = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
        for key, ref in (("red", scl10), ("nir", scl10), ("swir16", scl), ("coastal", scl[1::3, 1::3])):
            band = _read(catalog_path, item, key)
            np.testing.assert_array_equal(band == 0, ref == 0)


# ----------------------------------------------------------------------------- Landsat


def test_landsat_projection_v11_item_level(raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["landsat-c2-l2"]
    item = raw_items[item_id]
    props = item["properties"]
    assert props["proj:epsg"] == 32655 and isinstance(props["proj:epsg"], int)
    assert "proj:code" not in props
    assert sample_data.PROJ_V11 in item["stac_extensions"]
    assert props["proj:shape"] == [600, 640]
    assert props["proj:transform"] == [30.0, 0.0, 453585.0, 0.0, -30.0, 4838715.0]
    assert all("proj:shape" not in a and "proj:transform" not in a for a in item["assets"].values())
    assert set(item["assets"]) == {"red", "green", "blue", "nir08", "swir16", "swir22", "qa_pixel", "thumbnail"}
    assert item["assets"]["qa_pixel"]["roles"] == ["cloud", "cloud-shadow", "snow-ice", "water-mask"]


def test_landsat_qa_pixel_bits(catalog_path: pathlib.Path, raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["landsat-c2-l2"]
    item = raw_items[item_id]
    qa = _read(catalog_path, item, "qa_pixel")
    assert qa.dtype == np.uint16
    for bit in (0, 1, 2, 3, 4, 5, 6, 7):
        assert ((qa >> bit) & 1).any(), bit
    assert ((qa >> 8) != 0).any()  # confidence bits: a mask must test single bits
    fill = (qa & 1) == 1
    assert (qa[fill] == 1).all()
    nodata = _chip_fractions(fill, 256)
    assert (nodata > 0.5).any() and ((nodata > 0) & (nodata <= 0.5)).any()
    red = _read(catalog_path, item, "red")
    np.testing.assert_array_equal(red == 0, fill)


# ----------------------------------------------------------------------------- NAIP, S1, MODIS


def test_naip(catalog_path: pathlib.Path, raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["naip"]
    item = raw_items[item_id]
    props = item["properties"]
    assert props["proj:epsg"] == 26919
    assert CRS.from_wkt(props["proj:wkt2"]).to_epsg() == 26919
    assert props["proj:shape"] == [700, 900]
    assert [b["common_name"] for b in item["assets"]["image"]["eo:bands"]] == ["red", "green", "blue", "nir"]
    with rasterio.open(_asset_path(catalog_path, item, "image")) as src:
        assert src.count == 4 and src.dtypes == ("uint8",) * 4 and src.nodata is None
        assert src.res == (0.6, 0.6)


def test_sentinel1_swath_edge_nodata(catalog_path: pathlib.Path, raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["sentinel-1-rtc"]
    item = raw_items[item_id]
    assert item["properties"]["proj:code"] == "EPSG:32633"
    for key in ("vv", "vh"):
        data = _read(catalog_path, item, key)
        assert data.dtype == np.float32 and data.shape == (800, 1000)
        nodata = data == -32768.0
        width_per_row = nodata.sum(axis=1)
        assert width_per_row[0] > 0 and width_per_row[-1] > 3 * width_per_row[0]
        assert not nodata[:, 400:].any()
        assert (data[~nodata] > 0).all()


def test_modis_crs_without_epsg(catalog_path: pathlib.Path, raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["modis-09a1-061"]
    item = raw_items[item_id]
    props = item["properties"]
    assert "proj:code" in props and props["proj:code"] is None and "proj:epsg" not in props
    crs = CRS.from_wkt(props["proj:wkt2"])
    assert crs.to_epsg() is None and crs.is_projected
    assert CRS.from_json_dict(props["proj:projjson"]).equals(crs)
    assert crs.equals(CRS.from_proj4(sample_data.MODIS_SINUSOIDAL))
    assert props["proj:transform"][2] == -11119505.196667 and props["proj:transform"][5] == 4447802.078667
    with rasterio.open(_asset_path(catalog_path, item, "sur_refl_b01")) as src:
        assert src.crs.to_epsg() is None and CRS.from_user_input(src.crs).equals(crs)


def test_modis_qc_modland_values(catalog_path: pathlib.Path, raw_items: dict) -> None:
    (item_id,) = SAMPLE_COLLECTIONS["modis-09a1-061"]
    item = raw_items[item_id]
    qc = _read(catalog_path, item, "sur_refl_qc_500m")
    assert qc.dtype == np.uint32
    modland = qc & 3
    assert set(np.unique(modland).tolist()) == {0, 1, 2, 3}
    assert len(np.unique(qc[modland == 0])) > 1 and (qc[modland == 0] > 3).any()  # higher bits set
    for b in range(1, 8):
        refl = _read(catalog_path, item, f"sur_refl_b{b:02d}")
        assert refl.dtype == np.int16
        np.testing.assert_array_equal(refl == -28672, modland == 3)


# ----------------------------------------------------------------------------- determinism, atomicity


def test_generation_is_deterministic_and_regenerates_outdated(
    catalog_path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    first = _digest_tree(catalog_path.parent)
    other = generate_sample_catalog(tmp_path / "again")
    assert _digest_tree(other.parent) == first
    assert any(name.endswith(".tif") for name in first)

    # an outdated or damaged catalog is rebuilt (identically)
    marker = other.parent / sample_data.MARKER_NAME
    marker.write_text(json.dumps({"version": "0", "files": {}}))
    (other.parent / "naip" / SAMPLE_COLLECTIONS["naip"][0] / "image.tif").unlink()
    assert generate_sample_catalog(tmp_path / "again") == other
    assert _digest_tree(other.parent) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [".again.lock", "again"]


def test_complete_catalog_is_not_rewritten(catalog_path: pathlib.Path) -> None:
    root = catalog_path.parent
    marker = json.loads((root / sample_data.MARKER_NAME).read_text())
    assert marker["version"] == SAMPLE_DATA_VERSION
    assert set(marker["files"]) == {p.relative_to(root).as_posix() for p in root.rglob("*")
                                    if p.is_file() and p.name != sample_data.MARKER_NAME}
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_sample_catalog(root) == catalog_path
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert not [p for p in root.parent.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_failure_leaves_nothing_visible(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = sensors_s2._build_s2
    calls = []

    def failing_build(spec, item_dir):  # the first item is written for real, then we crash
        calls.append(spec.item_id)
        if len(calls) == 2:
            raise RuntimeError("simulated crash half-way")
        return real_build(spec, item_dir)

    monkeypatch.setattr(sensors_s2, "_build_s2", failing_build)  # the catalog looks it up per build
    with pytest.raises(RuntimeError, match="half-way"):
        generate_sample_catalog(tmp_path / "sample")
    assert not (tmp_path / "sample").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_stale_tmp_folders_are_cleaned_and_foreign_folders_kept(tmp_path: pathlib.Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_sample_catalog(foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_staging_folders_of_killed_writers_are_removed(tmp_path: pathlib.Path) -> None:
    # io.atomic names a staging folder .{host}.{pid}.{random}.tmp: a dead pid marks a killed writer
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    host = atomic.temp_name().split(".")[0]
    killed = tmp_path / f".{host}.{dead_pid}.{'a' * 12}.tmp"
    (killed / "sentinel-2-l2a").mkdir(parents=True)
    live = tmp_path / f".{host}.{os.getpid()}.{'b' * 12}.tmp"  # a writer that is still running
    live.mkdir()
    catalog = generate_sample_catalog(tmp_path / "sample")
    assert catalog.is_file()
    assert not killed.exists()
    assert live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".sample.lock", "sample", live.name])


def test_default_dir_and_ensure(catalog_path: pathlib.Path, tmp_path: pathlib.Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACCHIP_SAMPLE_DIR", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_sample_dir() == tmp_path / "home" / ".cache" / "stacchip_assets" / "sample"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert default_sample_dir() == tmp_path / "dh" / "stacchip_sample"
    monkeypatch.setenv("STACCHIP_SAMPLE_DIR", str(catalog_path.parent))
    assert default_sample_dir() == catalog_path.parent
    assert ensure_sample_catalog() == catalog_path  # already complete: returns at once
    assert ensure_sample_catalog(catalog_path.parent) == catalog_path


def test_cli_prints_catalog_path(catalog_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample_data.main([str(catalog_path.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(catalog_path)
