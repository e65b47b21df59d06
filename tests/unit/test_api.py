"""The stacchip-compatible library API (DESIGN section 5): names, arguments, behaviour."""

from __future__ import annotations

import inspect
import json
import shutil

import boto3
import numpy as np
import pystac
import pytest
import shapely

import stacchip_assets
from stacchip_assets import Chipper, Indexer, InvalidIdentifierError, StacchipError, StorageError
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS, generate_sample_catalog, sample_item_paths
from stacchip_assets.index.chip_indexer import (
    ChipIndexer,
    LandsatIndexer,
    ModisIndexer,
    NoDataMaskChipIndexer,
    NoStatsChipIndexer,
    Sentinel2Indexer,
)
from stacchip_assets.index.chipper import Chipper as ChipperFromModule
from stacchip_assets.utils import load_indexer_local, load_indexer_s3


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    catalog = generate_sample_catalog(tmp_path_factory.mktemp("sample") / "catalog")
    return sample_item_paths(catalog)


def parameters(func) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(func).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]


def test_constructor_signatures_match_stacchip():
    empty = inspect.Parameter.empty
    expected = [("self", empty), ("item", empty), ("chip_size", 256), ("chip_max_nodata", 0.5), ("shape", None)]
    for cls in (ChipIndexer, NoStatsChipIndexer, Sentinel2Indexer, LandsatIndexer, ModisIndexer):
        assert parameters(cls.__init__) == expected, cls
    assert parameters(NoDataMaskChipIndexer.__init__)[:5] == [
        ("self", empty), ("item", empty), ("nodata_mask", empty), ("chip_size", 256), ("chip_max_nodata", 0.5)
    ]
    assert parameters(Chipper.__init__) == [
        ("self", empty), ("indexer", empty), ("mountpath", None), ("assets", None), ("asset_blacklist", None)
    ]
    assert Chipper is ChipperFromModule
    for name in ("shape", "transform", "crs", "x_size", "y_size", "size", "bbox"):
        assert hasattr(ChipIndexer, name)
    for name in ("get_chip_bbox", "reproject", "get_stats", "create_index"):
        assert callable(getattr(ChipIndexer, name))
    assert issubclass(stacchip_assets.AssetReadError, StacchipError)


def test_indexer_properties_and_reproject(sample):
    item = pystac.Item.from_file(str(sample[SAMPLE_COLLECTIONS["sentinel-2-l2a"][0]]))
    indexer = Indexer(item)
    assert isinstance(indexer, Sentinel2Indexer)
    assert indexer.shape == [1080, 1080] and (indexer.x_size, indexer.y_size, indexer.size) == (4, 4, 16)
    assert indexer.transform[0] == 10 and indexer.transform[2] == 399960
    assert indexer.crs.to_epsg() == 32631
    assert indexer.bbox == (399960.0, 5500020.0 - 10800, 399960.0 + 10800, 5500020.0)
    native = shapely.box(399960.0, 5500020.0 - 2560, 399960.0 + 2560, 5500020.0)
    assert indexer.reproject(native).normalize().equals_exact(indexer.get_chip_bbox(0, 0).normalize(), 1e-9)


def test_chipper_over_the_index_not_the_raw_grid(sample):
    item = pystac.Item.from_file(str(sample[SAMPLE_COLLECTIONS["sentinel-2-l2a"][0]]))
    indexer = Indexer(item)
    chipper = Chipper(indexer, assets=["red", "scl"])
    assert len(chipper) == indexer.index.num_rows < indexer.size
    x, y, chip = chipper[0]
    assert set(chip) == {"red", "scl"} and chip["red"].shape == (1, 256, 256)


def test_load_indexer_local_reads_stacchip_layout(sample, tmp_path):
    item_id = SAMPLE_COLLECTIONS["landsat-c2-l2"][0]
    item = pystac.Item.from_file(str(sample[item_id]))
    item.make_asset_hrefs_absolute()
    folder = tmp_path / "landsat-c2-l2" / item_id
    folder.mkdir(parents=True)
    (folder / "stac_item.json").write_text(json.dumps(item.to_dict()))
    indexer = load_indexer_local(tmp_path, "landsat-c2-l2", item_id)
    assert isinstance(indexer, LandsatIndexer)
    assert indexer.create_index().num_rows > 0
    with pytest.raises(InvalidIdentifierError):
        load_indexer_local(tmp_path, "landsat-c2-l2", "../../etc/passwd")
    with pytest.raises(StorageError, match="missing-item"):
        load_indexer_local(tmp_path, "landsat-c2-l2", "missing-item")


@pytest.mark.e2e
def test_load_indexer_s3_from_a_real_s3_server(sample, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="chips")
        item_id = SAMPLE_COLLECTIONS["naip"][0]
        item = pystac.Item.from_file(str(sample[item_id]))
        item.make_asset_hrefs_absolute()
        s3.put_object(Bucket="chips", Key=f"naip/{item_id}/stac_item.json", Body=json.dumps(item.to_dict()).encode())
        indexer = load_indexer_s3("chips", "naip", item_id)
        assert isinstance(indexer, NoStatsChipIndexer)
        assert indexer.item.get_self_href() == f"s3://chips/naip/{item_id}/stac_item.json"
        chip = Chipper(indexer, assets=["image"]).chip(0, 0)["image"]
        assert chip.shape == (4, 256, 256) and np.ptp(chip) > 0
        with pytest.raises(StorageError, match="NoSuchKey|Not Found|404"):
            load_indexer_s3("chips", "naip", "absent-item")
    finally:
        server.stop()


def test_indexer_kind_can_be_forced(sample):
    item = pystac.Item.from_file(str(sample[SAMPLE_COLLECTIONS["sentinel-2-l2a"][0]]))
    assert type(Indexer(item, kind="nostats")) is NoStatsChipIndexer
    with pytest.raises(StacchipError, match="unknown indexer kind"):
        Indexer(item, kind="sentinel-7")
    assert shutil is not None
