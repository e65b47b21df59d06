"""The same graph with the storage base on S3: SeaweedFS (`weed mini`, SigV4 enforced) on 127.0.0.1,
COG assets on S3 too, items published to the real STAC API. Indexes are read back over S3 by
geopandas and pyarrow.dataset; chips read from `s3://` COGs through GDAL equal the local windows;
wrong credentials fail with an error that says so and never shows the secret.
"""

from __future__ import annotations

import re
import uuid

import dagster as dg
import geopandas
import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import rasterio
from rasterio.windows import Window

from stacchip_assets import Chipper, Indexer
from stacchip_assets.dagster_defs import StorageResource
from stacchip_assets.errors import AssetReadError, StorageError
from stacchip_assets.index.reader import read_chip
from stacchip_assets.io.raster import AssetAccess, gdal_env, open_asset
from stacchip_assets.io.storage import Storage

from tests.e2e.test_e2e_stac_api import ASSETS, IDS, S2, SETTINGS, Pipeline, expected_chips
from tests.support.dagster_support import QUIET
from tests.support.servers import collection_json, local_item

WRONG_SECRET = "wrong-secret-7c1d2e9a5b"  # must never appear in a message or a log


def _name(request, prefix: str) -> str:
    return f"{prefix}-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests follow each item's own run; batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in tests/e2e/test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def buckets(request, s3_server):
    """Two fresh buckets: COGs and the storage base."""
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:8]
    cogs, index = f"cogs-{suffix}", f"stacchip-{suffix}"
    client = s3_server.client()
    for bucket in (cogs, index):
        client.create_bucket(Bucket=bucket)
    return cogs, index


def upload_cogs(s3_server, bucket: str, catalog, item_ids) -> None:
    client = s3_server.client()
    root = catalog.parent
    for item_id in item_ids:
        for key in ASSETS:
            path = root / S2 / item_id / f"{key}.tif"
            client.upload_file(str(path), bucket, f"{S2}/{item_id}/{key}.tif")


def s3_storage(s3_server, base: str, secret: str | None = None) -> StorageResource:
    return StorageResource(base=base, s3_endpoint_url=s3_server.endpoint, s3_region=s3_server.region,
                           s3_access_key_id=s3_server.access_key, s3_secret_access_key=secret or s3_server.secret_key)


@pytest.fixture()
def s3_pipeline(request, stac_api, s3_server, buckets, sample_catalog):
    cogs, index = buckets
    collection = _name(request, "s3")
    stac_api.create_collection(collection_json(sample_catalog, S2, collection))
    try:
        with dg.instance_for_test() as instance:
            yield Pipeline(stac_api, sample_catalog, f"s3://{cogs}", collection,
                           s3_storage(s3_server, f"s3://{index}/base"), instance)
    finally:
        stac_api.delete_collection(collection)


def test_the_graph_on_s3_storage_with_cogs_on_s3(s3_pipeline, s3_server, buckets, sample_catalog):
    p = s3_pipeline
    cogs, index_bucket = buckets
    upload_cogs(s3_server, cogs, sample_catalog, IDS[:2])
    p.publish(0, "2026-01-01T00:00:01Z")
    p.publish(1, "2026-01-01T00:00:02Z")

    # the whole graph: item set, per-item chip indexes (through the sensor), combined index and its checks
    item_set = p.defs.resolve_job_def("stac_items_job").execute_in_process(
        partition_key=p.collection, instance=p.instance, run_config=QUIET)
    assert item_set.success
    assert sorted(p.carry_out(p.tick(None))) == sorted([p.key(0), p.key(1)])
    combined = p.combine()
    assert str(combined.metadata["path"].value).startswith(f"s3://{index_bucket}/base/combined")

    # DESIGN section 4's keys, in the bucket
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=index_bucket)
            for o in page.get("Contents", [])}
    for item_id in IDS[:2]:
        assert f"base/{p.collection}/{item_id}/stac_item.json" in keys
        assert f"base/index/{p.collection}/{item_id}/index_{item_id}.parquet" in keys
        assert f"base/combined/{p.collection}/{item_id}.parquet" in keys
    assert f"base/item_sets/{p.collection}.json" in keys
    stored = p.store().read_item(p.collection, IDS[0])
    assert stored.assets["scl"].href == f"s3://{cogs}/{S2}/{IDS[0]}/scl.tif"

    # read back over S3 by geopandas and pyarrow.dataset, with pyarrow's own S3 client
    fs = pafs.S3FileSystem(endpoint_override=s3_server.host_port, scheme="http", access_key=s3_server.access_key,
                           secret_key=s3_server.secret_key, region=s3_server.region)
    expected = expected_chips(sample_catalog, p.collection, IDS[:2])
    one = geopandas.read_parquet(f"{index_bucket}/base/index/{p.collection}/{IDS[0]}/index_{IDS[0]}.parquet", filesystem=fs)
    assert one.crs.equals("OGC:CRS84") and one.geometry.is_valid.all()
    assert {(p.collection, c) for c in one["chipid"]} == {k for k in expected if k[1].startswith(IDS[0])}
    table = pads.dataset(f"{index_bucket}/base/combined", filesystem=fs, format="parquet").to_table()
    got = dict(zip(zip(table.column("collection").to_pylist(), table.column("chipid").to_pylist()),
                   zip(table.column("cloud_cover_percentage").to_pylist(), table.column("nodata_percentage").to_pylist())))
    assert table.num_rows == len(expected) and got == expected

    # a chip read from the s3:// COGs (through the storage resource's GDAL settings) equals the local windows
    row = table.filter(pads.field("chipid") == f"{IDS[0]}-1-1").to_pylist()[0]
    with p.storage.gdal_env():
        pixels = read_chip(row, storage=p.store())
    assert set(pixels) == set(ASSETS)
    window = Window(256, 256, 256, 256)
    for key in ("blue", "green", "red", "nir"):  # 10 m assets on the chip grid: exactly the source window
        with rasterio.open(sample_catalog.parent / S2 / IDS[0] / f"{key}.tif") as src:
            np.testing.assert_array_equal(pixels[key], src.read(window=window))
    with Chipper(Indexer(local_item(sample_catalog, S2, IDS[0]), kind=SETTINGS.indexer), assets=ASSETS) as local:
        for key, values in local.chip(1, 1).items():  # 20 m assets too, resampled the same way
            np.testing.assert_array_equal(pixels[key], values)


def test_wrong_credentials_say_so_and_never_show_the_secret(s3_pipeline, s3_server, buckets, cog_server, caplog, capfd):
    p = s3_pipeline
    cogs, index_bucket = buckets
    secrets_seen: list[str] = []

    # 1. the graph: COGs over HTTP, the storage base on S3 with a wrong secret -> the run fails, saying why
    p.href_base = cog_server
    p.use_storage(s3_storage(s3_server, f"s3://{index_bucket}/base", secret=WRONG_SECRET))
    p.publish(0, "2026-01-01T00:00:01Z")
    assert p.carry_out(p.tick(None), raise_on_error=False) == [p.key(0)]
    run = p.last_run
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "S3 refused the credentials (SignatureDoesNotMatch) for access key 'stacchip-test'" in message, message
    assert s3_server.endpoint in message
    secrets_seen += [repr(record) for record in p.instance.all_logs(run.run_id)]
    assert len(p.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": p.key(0)}))) == 1  # not retried

    # 2. the storage base read with pyarrow (wrong secret): a StorageError that says so
    with pytest.raises(StorageError, match=r"S3 refused the credentials \(ACCESS_DENIED\)") as read_error:
        Storage.from_uri(f"s3://{cogs}", endpoint_url=s3_server.endpoint, region=s3_server.region,
                         access_key_id=s3_server.access_key, secret_access_key=WRONG_SECRET).read_bytes(f"{S2}/x.tif")
    secrets_seen.append(str(read_error.value))

    # 3. a COG on S3 opened through GDAL with the wrong secret (an object GDAL has not cached)
    s3_server.client().put_object(Bucket=cogs, Key="fresh/red.tif", Body=b"II*\x00" + bytes(100))
    access = AssetAccess(s3_endpoint_url=s3_server.endpoint, s3_region=s3_server.region,
                         access_key_id=s3_server.access_key, secret_access_key=WRONG_SECRET)
    assert WRONG_SECRET not in repr(access)
    with gdal_env(access), pytest.raises(AssetReadError, match="access refused") as open_error:
        open_asset(f"s3://{cogs}/fresh/red.tif", item_id="x", asset_key="red")
    assert "signature" in str(open_error.value).lower()
    secrets_seen.append(str(open_error.value))

    out, err = capfd.readouterr()
    secrets_seen += [caplog.text, out, err]
    assert not [text for text in secrets_seen if WRONG_SECRET in text]


def test_one_resource_sets_every_gdal_option(monkeypatch, s3_server):
    """The storage resource, bound to the environment variables, is the one source of GDAL's settings."""
    from rasterio.env import getenv

    from stacchip_assets.dagster_defs.resources import default_resources
    from stacchip_assets.errors import StacchipError
    from stacchip_assets.io.raster import DEFAULT_GDAL_OPTIONS, sign_href

    for name, value in {
        "STACCHIP_STORAGE_BASE": "s3://bucket/base", "STACCHIP_S3_ENDPOINT_URL": s3_server.endpoint,
        "STACCHIP_S3_REGION": "eu-central-1", "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": WRONG_SECRET,
        "STACCHIP_GDAL_OPTIONS": '{"GDAL_HTTP_MAX_RETRY": "5", "CPL_VSIL_CURL_CHUNK_SIZE": "65536"}',
        "STACCHIP_HREF_SIGNER": "tests.support.http_server:sign_with_test_token",
    }.items():
        monkeypatch.setenv(name, value)
    storage = default_resources()["storage"].process_config_and_initialize()
    assert WRONG_SECRET not in repr(storage.asset_access())
    with storage.gdal_env():
        config = getenv()
        for key, value in DEFAULT_GDAL_OPTIONS.items():
            if key != "GDAL_HTTP_MAX_RETRY":
                assert str(config[key]).upper() == value.upper(), key
        assert config["GDAL_HTTP_MAX_RETRY"] == "5" and config["CPL_VSIL_CURL_CHUNK_SIZE"] == "65536"
        assert config["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert config["AWS_S3_ENDPOINT"] == s3_server.host_port
        assert (config["AWS_HTTPS"], config["AWS_VIRTUAL_HOSTING"], config["AWS_REGION"]) == ("NO", "FALSE", "eu-central-1")
        assert config["AWS_ACCESS_KEY_ID"] == "key-id"
        assert sign_href("https://x/a.tif").endswith("sig=stacchip-test-token")
    assert not rasterio.env.hasenv() or "AWS_S3_ENDPOINT" not in getenv()  # nothing leaks out of the block
    assert sign_href("https://x/a.tif") == "https://x/a.tif"
    with pytest.raises(StacchipError, match="credentials"):
        AssetAccess(gdal_options={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(StacchipError, match="cannot load the href signer"):
        with gdal_env(AssetAccess(href_signer="no_such_module:sign")):
            pass
