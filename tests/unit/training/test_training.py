"""Training shards from the sample catalog's real COGs: selection, pixels, metadata, Dask, atomicity."""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pystac
import pytest
import shapely

from stacchip_assets import Chipper, Indexer, InvalidIdentifierError, StacchipError
from stacchip_assets.demo.sample_data import generate_sample_catalog, sample_item_paths
from stacchip_assets.training import (
    NORM_KEYS,
    TrainingSetConfig,
    load_shard,
    read_manifest,
    read_training_set_info,
    select_chips,
    write_training_set,
)
from stacchip_assets.training import dask_client as dask_client_for

CHIP = 128
try:
    import zarr  # noqa: F401

    FORMATS = ["npz", "zarr"]
except ImportError:  # the zarr extra is not installed: npz only
    FORMATS = ["npz"]
BANDS = {
    "sentinel-2-l2a": ["blue", "green", "red", "nir", "rededge1", "coastal"],  # 10, 20 and 60 m
    "landsat-c2-l2": ["red", "green", "blue", "nir08", "swir16", "swir22"],
    "naip": ["image"],  # one 4-band asset
    "sentinel-1-rtc": ["vv", "vh"],  # float32, nodata -32768
    "modis-09a1-061": [f"sur_refl_b0{i}" for i in range(1, 8)],  # int16, nodata -28672
}


def sample_index(tmp_path_factory) -> pa.Table:
    """The combined chip index of every sample item (chip size 128), item JSON paths recorded."""
    catalog = generate_sample_catalog(tmp_path_factory.getbasetemp() / "training-sample")
    tables = []
    for path in sample_item_paths(catalog).values():
        item = pystac.Item.from_file(str(path))
        tables.append(Indexer(item, chip_size=CHIP).create_index(item_href=str(path)))
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> pa.Table:
    return sample_index(tmp_path_factory)


def config(**overrides) -> TrainingSetConfig:
    values = dict(bands=BANDS, shard_size=16, seed=7)
    values.update(overrides)
    return TrainingSetConfig(**values)


class ReferenceChips:
    """Pixels straight from the core Chipper, one Indexer per item as the index was built."""

    def __init__(self) -> None:
        self.chippers: dict[str, Chipper] = {}

    def pixels(self, href: str, collection: str, x: int, y: int) -> np.ndarray:
        chipper = self.chippers.get(href)
        if chipper is None:
            chipper = self.chippers[href] = Chipper(Indexer(pystac.Item.from_file(href), chip_size=CHIP), assets=BANDS[collection])
        chip = chipper.chip(x, y)
        return np.concatenate([chip[key] for key in BANDS[collection]]).astype(np.float32)

    def close(self) -> None:
        for chipper in self.chippers.values():
            chipper.close()


def independent_norms(row: dict) -> dict[str, tuple[float, float]]:
    """prechip's formulas, from the WKB footprint and a Python datetime (no library code)."""
    xmin, ymin, xmax, ymax = shapely.from_wkb(row["geometry"]).bounds
    lon, lat = xmin + (xmax - xmin) / 2, ymin + (ymax - ymin) / 2
    when: dt.datetime = row["datetime"]
    week = when.isocalendar().week * 2 * math.pi / 52
    hour = when.hour * 2 * math.pi / 24
    return {
        "lat_norm": (math.sin(math.radians(lat)), math.cos(math.radians(lat))),
        "lon_norm": (math.sin(math.radians(lon)), math.cos(math.radians(lon))),
        "week_norm": (math.sin(week), math.cos(week)),
        "hour_norm": (math.sin(hour), math.cos(hour)),
    }


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------------------
# Selection
# -------------------------------------------------------------------------------------------------
def chipkeys(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("collection").to_pylist(), table.column("chipid").to_pylist()))


def test_selection_is_deterministic_without_duplicates_and_ignores_row_order(index):
    cfg = config(sample_size=100)
    first = select_chips(index, cfg)
    shuffled = index.take(pa.array(np.random.default_rng(1).permutation(index.num_rows)))
    assert chipkeys(select_chips(shuffled, cfg)) == chipkeys(first)
    assert first.num_rows == 100
    assert len(set(chipkeys(first))) == 100
    # a combined index that holds an item twice does not yield its chips twice
    doubled = pa.concat_tables([index, index])
    every = select_chips(doubled, config())
    assert every.num_rows == index.num_rows and len(set(chipkeys(every))) == index.num_rows
    # another seed draws another sample
    assert chipkeys(select_chips(index, config(sample_size=100, seed=8))) != chipkeys(first)


def test_sample_larger_than_the_selection_takes_all_unless_duplicates_are_allowed(index):
    n = index.num_rows
    assert select_chips(index, config(sample_size=n + 50)).num_rows == n
    with_dupes = select_chips(index, config(sample_size=3 * n, allow_duplicates=True))
    assert with_dupes.num_rows == 3 * n
    assert len(set(chipkeys(with_dupes))) < 3 * n


def test_filters(index):
    per_collection = select_chips(index, config(sample_size={"naip": 5, "sentinel-2-l2a": 10}))
    counts = dict(zip(*[c.to_pylist() for c in per_collection.column("collection").value_counts().flatten()]))
    assert counts["naip"] == 5 and counts["sentinel-2-l2a"] == 10
    assert counts["landsat-c2-l2"] == pc.sum(pc.equal(index.column("collection"), "landsat-c2-l2")).as_py()

    cloudy = select_chips(index, config(max_cloud=0.1, max_nodata=0.05))
    assert 0 < cloudy.num_rows < index.num_rows
    assert pc.max(cloudy.column("cloud_cover_percentage")).as_py() <= 0.1
    assert pc.max(cloudy.column("nodata_percentage")).as_py() <= 0.05

    s2 = select_chips(index, config(collections=["sentinel-2-l2a"], start="2023-07-04", end=dt.date(2023, 7, 4)))
    assert set(s2.column("item_id").to_pylist()) == {"S2B_31UDQ_20230704_0_L2A", "S2B_31UEQ_20230704_0_L2A"}
    exact = select_chips(index, config(collections=["sentinel-2-l2a"], start="2023-07-04T10:56:22Z", end="2023-07-04T11:00:00Z"))
    assert set(exact.column("item_id").to_pylist()) == {"S2B_31UEQ_20230704_0_L2A"}

    # bbox: a small box around one S2 chip's centre keeps the chips whose footprint bbox touches it
    row = index.filter(pc.equal(index.column("chipid"), "S2B_31UDQ_20230704_0_L2A-3-3")).to_pylist()[0]
    b = row["bbox"]
    lon, lat = (b["xmin"] + b["xmax"]) / 2, (b["ymin"] + b["ymax"]) / 2
    query = (lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001)
    near = select_chips(index, config(bbox=query))
    expected = {
        (r["collection"], r["chipid"]) for r in index.to_pylist()
        if r["bbox"]["xmax"] >= query[0] and r["bbox"]["xmin"] <= query[2]
        and r["bbox"]["ymax"] >= query[1] and r["bbox"]["ymin"] <= query[3]
    }
    assert ("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A-3-3") in expected
    assert set(chipkeys(near)) == expected
    assert 1 <= len(expected) < 10


def test_config_validation_and_round_trip():
    cfg = config(start=dt.date(2023, 1, 1), end="2023-12-31T12:00:00Z", bbox=[1, 2, 3, 4], sample_size={"naip": 3})
    again = TrainingSetConfig.from_dict(cfg.to_dict())
    assert again == cfg or again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="no bands"):
        TrainingSetConfig(bands={"naip": ["image"]}, collections=["naip", "landsat-c2-l2"])
    with pytest.raises(ValueError, match="fraction"):
        config(max_cloud=20)
    with pytest.raises(ValueError, match="format"):
        config(format="tfrecord")
    with pytest.raises(InvalidIdentifierError):
        TrainingSetConfig(bands={"../evil": ["a"]})


# -------------------------------------------------------------------------------------------------
# Shards
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_equal_chipper_pixels_and_independent_metadata(index, tmp_path, fmt):
    cfg = config(sample_size=120, format=fmt)
    selection = select_chips(index, cfg)
    manifest = write_training_set(selection, cfg, tmp_path / "ts")
    assert manifest.num_rows == 120
    assert len(set(chipkeys(manifest))) == 120  # no chip twice
    assert read_manifest(tmp_path / "ts").equals(manifest)

    by_chip = {(r["collection"], r["chipid"]): r for r in index.to_pylist()}
    reference = ReferenceChips()
    shards: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    try:
        for row in manifest.to_pylist():
            key = (row["collection"], int(row["shard"]))
            if key not in shards:
                shards[key] = load_shard(tmp_path / "ts", *key)
            arrays = shards[key]
            pos = row["position"]
            assert row["index"] == row["shard"] * cfg.shard_size + pos
            source = by_chip[(row["collection"], row["chipid"])]
            assert (row["chip_index_x"], row["chip_index_y"], row["item_id"]) == (
                source["chip_index_x"], source["chip_index_y"], source["item_id"])
            expected = reference.pixels(source["item_href"], row["collection"], source["chip_index_x"], source["chip_index_y"])
            np.testing.assert_array_equal(arrays["pixels"][pos], expected, err_msg=row["chipid"])
            for key_name, value in independent_norms(source).items():
                np.testing.assert_allclose(arrays[key_name][pos], value, atol=1e-6, err_msg=f"{row['chipid']} {key_name}")
    finally:
        reference.close()

    info = read_training_set_info(tmp_path / "ts")
    assert info["samples"] == 120
    for collection, entry in info["collections"].items():
        shard_count = entry["shards"]
        assert shard_count == math.ceil(entry["samples"] / cfg.shard_size)
        assert sum(len(load_shard(tmp_path / "ts", collection, s)["pixels"]) for s in range(shard_count)) == entry["samples"]
    assert [c["name"] for c in info["collections"]["naip"]["layout"]["channels"]] == ["red", "green", "blue", "nir"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_npz_shards_have_prechip_layout_and_keep_the_hour(index, tmp_path):
    cfg = config(collections=["sentinel-2-l2a"], shard_size=32)
    manifest = write_training_set(select_chips(index, cfg), cfg, tmp_path / "ts")
    path = tmp_path / "ts" / manifest.column("path")[0].as_py()
    with np.load(path) as data:
        assert list(data.files) == ["pixels", "lon_norm", "lat_norm", "week_norm", "hour_norm"]
        assert data["pixels"].dtype == np.float32 and data["pixels"].shape == (32, 6, CHIP, CHIP)
        for key in NORM_KEYS:
            assert data[key].dtype == np.float32 and data[key].shape == (32, 2)
        hours = {round(math.degrees(math.atan2(s, c)) / 15) % 24 for s, c in data["hour_norm"]}
    assert hours <= {10}  # Sentinel-2 overpass at 10:46 / 10:56 UTC, not prechip's forced noon
    # the last shard is written even when short
    info = read_training_set_info(tmp_path / "ts")
    assert info["shards"][-1]["samples"] == manifest.num_rows - 32 * (len(info["shards"]) - 1)


def test_legacy_latlon_swap_reproduces_prechip(index, tmp_path):
    cfg = config(collections=["naip"], shard_size=64)
    legacy = config(collections=["naip"], shard_size=64, legacy_latlon_swap=True)
    write_training_set(select_chips(index, cfg), cfg, tmp_path / "a")
    write_training_set(select_chips(index, legacy), legacy, tmp_path / "b")
    a, b = load_shard(tmp_path / "a", "naip", 0), load_shard(tmp_path / "b", "naip", 0)
    np.testing.assert_array_equal(a["lat_norm"], b["lon_norm"])
    np.testing.assert_array_equal(a["lon_norm"], b["lat_norm"])


def test_failures_leave_nothing_and_existing_sets_are_kept(index, tmp_path):
    bad = TrainingSetConfig(bands={"naip": ["image", "no-such-asset"]})
    with pytest.raises(StacchipError, match="no-such-asset"):
        write_training_set(select_chips(index, bad), bad, tmp_path / "ts")
    assert list(tmp_path.iterdir()) == []

    cfg = config(collections=["modis-09a1-061"])
    write_training_set(select_chips(index, cfg), cfg, tmp_path / "ts")
    before = files_of(tmp_path / "ts")
    with pytest.raises(FileExistsError):
        write_training_set(select_chips(index, cfg), cfg, tmp_path / "ts")
    assert files_of(tmp_path / "ts") == before
    write_training_set(select_chips(index, cfg), cfg, tmp_path / "ts", overwrite=True)
    assert files_of(tmp_path / "ts") == before  # same input, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts"]


def test_empty_selection_writes_an_empty_set(index, tmp_path):
    cfg = config(collections=["naip"], start="1990-01-01", end="1990-12-31")
    manifest = write_training_set(select_chips(index, cfg), cfg, tmp_path / "ts")
    assert manifest.num_rows == 0
    assert read_training_set_info(tmp_path / "ts")["shards"] == []


# -------------------------------------------------------------------------------------------------
# Dask: a real LocalCluster with two worker processes
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed")
    # LocalCluster(n_workers=2, threads_per_worker=1, processes=True): two worker processes
    with dask_client_for(n_workers=2, silence_logs=40) as client:
        assert list(client.nthreads().values()) == [1, 1]
        yield client


def test_dask_path_writes_byte_identical_shards(index, tmp_path, dask_client):
    from stacchip_assets.training.band_stats import band_statistics

    for fmt in FORMATS:
        cfg = config(format=fmt, sample_size=200)
        selection = select_chips(index, cfg)
        local = write_training_set(selection, cfg, tmp_path / f"local-{fmt}", chips_per_task=40)
        remote = write_training_set(selection, cfg, tmp_path / f"dask-{fmt}", client=dask_client, chips_per_task=40)
        assert remote.equals(local)
        a, b = files_of(tmp_path / f"local-{fmt}"), files_of(tmp_path / f"dask-{fmt}")
        assert sorted(a) == sorted(b)
        assert len([name for name in a if "shard_" in name or "/c/" in name]) >= 10
        for name in a:
            assert a[name] == b[name], name
    # the workers really did the work: they hold processes of their own
    pids = set(dask_client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids

    cfg = config(sample_size=150)
    selection = select_chips(index, cfg)
    assert band_statistics(selection, cfg, client=dask_client, chips_per_task=30) == band_statistics(selection, cfg)


def test_vectorized_week_and_hour_match_python_calendar():
    from stacchip_assets.training import iso_week, utc_hour

    rng = np.random.default_rng(0)
    micros = rng.integers(-20 * 365 * 86_400_000_000, 80 * 365 * 86_400_000_000, size=2000)
    # plus every day around three new years (ISO weeks 52/53/1 straddle them)
    days = [dt.datetime(y, 12, 24, 23, 59, tzinfo=dt.timezone.utc) + dt.timedelta(days=d) for y in (2020, 2021, 2026) for d in range(14)]
    micros = np.concatenate([micros, [int(d.timestamp() * 1_000_000) for d in days]])
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    when = [epoch + dt.timedelta(microseconds=int(m)) for m in micros]
    assert iso_week(micros).tolist() == [w.isocalendar().week for w in when]
    assert utc_hour(micros).tolist() == [w.hour for w in when]
