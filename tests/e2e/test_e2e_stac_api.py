"""End to end against a real STAC API: stac-fastapi-pgstac (transactions on) on PostgreSQL + PostGIS,
items whose assets are real COGs served over HTTP by a Range-capable server, all on 127.0.0.1 and
started by the session fixtures (tests/conftest.py). Nothing is mocked: the sensor polls the API
through pystac-client, chip_index reads the COGs through GDAL's /vsicurl/.

The item sensor is evaluated through a Dagster instance (`build_sensor_context(instance=...,
definitions=...)`) and its requests are carried out the way the daemon does: partitions added, run
keys already launched skipped, the other runs executed (in process). One test runs it under
`dagster dev`'s daemon instead.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pystac
import pytest

from stacchip_assets import Chipper, Indexer
from stacchip_assets.dagster_defs import (
    ITEM_PARTITIONS_NAME,
    ChipSettingsResource,
    CollectionConfig,
    StacSourceResource,
    StorageResource,
    build_definitions,
    item_partition_key,
)
from stacchip_assets.dagster_defs.sensors import parse_cursor
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.errors import AssetReadError, StacSourceError
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.index.item_index import ChipSettings
from stacchip_assets.io.raster import AssetAccess, gdal_env
from stacchip_assets.io.stac_source import SearchParams
from stacchip_assets.io.storage import Storage

from tests.conftest import DAGSTER_DEV_COLLECTION
from tests.support.dagster_support import QUIET, launch_tick_runs
from tests.support.http_server import TEST_TOKEN, serve_directory
from tests.support.servers import collection_json, item_json, local_item

S2 = "sentinel-2-l2a"
IDS = SAMPLE_COLLECTIONS[S2]
ASSETS = ["blue", "green", "red", "nir", "rededge1", "swir16", "scl"]
SETTINGS = ChipSettings(indexer="sentinel-2", chip_size=256, chip_max_nodata=0.5, assets=tuple(ASSETS[:-1]))
SENSOR = "stac_item_sensor"


def sensor_of(defs: dg.Definitions) -> dg.SensorDefinition:
    return next(s for s in defs.sensors if s.name == SENSOR)


def expected_chips(catalog: Path, collection: str, ids) -> dict[tuple[str, str], tuple[float, float]]:
    """(collection, chipid) -> (cloud, nodata) of the items indexed from the local files."""
    out = {}
    for item_id in ids:
        table = Indexer(local_item(catalog, S2, item_id), chip_size=SETTINGS.chip_size,
                        chip_max_nodata=SETTINGS.chip_max_nodata, kind=SETTINGS.indexer).create_index()
        for chipid, cloud, nodata in zip(table.column("chipid").to_pylist(), table.column("cloud_cover_percentage").to_pylist(),
                                         table.column("nodata_percentage").to_pylist()):
            out[(collection, chipid)] = (cloud, nodata)
    return out


@dataclass
class Pipeline:
    """The graph on one fresh API collection, a storage base and a Dagster instance."""

    api: object
    catalog: Path
    href_base: str
    collection: str
    storage: StorageResource
    instance: dg.DagsterInstance
    resources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = CollectionConfig(collection=self.collection, search=SearchParams(), chips=SETTINGS)
        self.use_storage(self.storage)

    def use_storage(self, storage: StorageResource) -> None:
        self.storage = storage
        self.resources = {
            "stac_source": StacSourceResource(api_url=self.api.url, page_size=2, max_items_per_tick=10, timeout_seconds=10),
            "storage": storage,
            "chip_settings": ChipSettingsResource(),
        }
        self.defs = self.definitions()

    def store(self) -> Storage:
        return self.storage.storage()

    def definitions(self) -> dg.Definitions:
        """A fresh code location (what a restart of `dagster dev` loads)."""
        return build_definitions([self.config], resources=self.resources)

    def item(self, index: int, updated: str, **properties) -> dict:
        data = item_json(self.catalog, S2, IDS[index], self.collection, self.href_base, updated=updated, assets=ASSETS)
        data["properties"].update(properties)
        return data

    def publish(self, index: int, updated: str, **properties) -> None:
        self.api.post_item(self.item(index, updated, **properties))

    def key(self, index: int) -> str:
        return item_partition_key(self.collection, IDS[index])

    def tick(self, cursor: str | None, defs: dg.Definitions | None = None) -> dg.SensorResult:
        defs = defs or self.defs
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=defs, resources=self.resources)
        return sensor_of(defs)(context)

    def carry_out(self, result: dg.SensorResult, raise_on_error: bool = True) -> list[str]:
        """What the daemon does with a tick's result; returns the partitions that were run."""
        launched = launch_tick_runs(self.instance, self.defs, result, SENSOR, raise_on_error)
        if launched:
            self.last_run = launched[-1][1]
        return [request.partition_key for request, _ in launched]

    def combine(self) -> dg.AssetMaterialization:
        outcome = self.defs.resolve_job_def("combined_index_job").execute_in_process(instance=self.instance, run_config=QUIET)
        assert outcome.success
        assert all(e.passed for e in outcome.get_asset_check_evaluations())
        return outcome.asset_materializations_for_node("combined_index")[0]

    def combined_chips(self) -> dict[tuple[str, str], tuple[float, float]]:
        table = CombinedIndex(self.store()).read()
        rows = list(zip(table.column("collection").to_pylist(), table.column("chipid").to_pylist(),
                        table.column("cloud_cover_percentage").to_pylist(), table.column("nodata_percentage").to_pylist()))
        assert len(rows) == len({(c, i) for c, i, _, _ in rows}), "duplicated chips"
        return {(c, i): (cloud, nodata) for c, i, cloud, nodata in rows}

    def materializations(self, index: int) -> int:
        return len(self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("chip_index"), asset_partitions=[self.key(index)]), limit=100).records)


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def pipeline(request, stac_api, cog_server, sample_catalog, tmp_path):
    collection = "e2e-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    stac_api.create_collection(collection_json(sample_catalog, S2, collection))
    try:
        with dg.instance_for_test() as instance:
            yield Pipeline(stac_api, sample_catalog, cog_server, collection, StorageResource(base=str(tmp_path / "base")),
                           instance)
    finally:
        stac_api.delete_collection(collection)


def test_sensor_indexes_exactly_the_posted_items(pipeline, sample_catalog):
    p = pipeline
    # an empty collection: nothing to do
    empty = p.tick(None)
    assert not empty.run_requests and not empty.dynamic_partitions_requests

    # two items published: two partitions, two runs; the combined index holds exactly their chips
    p.publish(0, "2026-01-01T00:00:01Z")
    p.publish(1, "2026-01-01T00:00:02Z")
    first = p.tick(empty.cursor)
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == sorted([p.key(0), p.key(1)])
    assert sorted(p.carry_out(first)) == sorted([p.key(0), p.key(1)])
    assert set(p.instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) == {p.key(0), p.key(1)}
    p.combine()
    # same chips and the same statistics as indexing the local files: GDAL read the COGs over HTTP
    assert p.combined_chips() == expected_chips(sample_catalog, p.collection, IDS[:2])

    # one more: only that one is indexed, and the combine step touches only it
    p.publish(2, "2026-01-01T00:00:03Z")
    second = p.tick(first.cursor)
    assert p.carry_out(second) == [p.key(2)]
    assert p.combine().metadata["items_changed"].value == 1
    assert p.combined_chips() == expected_chips(sample_catalog, p.collection, IDS)

    # an update (PUT) re-indexes that item, under a new run key
    p.api.put_item(p.item(0, "2026-01-01T00:00:04Z", **{"eo:cloud_cover": 1.5}))
    third = p.tick(second.cursor)
    assert [r.run_key for r in third.run_requests] == [f"{p.key(0)}@2026-01-01T00:00:04.000000Z"]
    assert not third.dynamic_partitions_requests  # the partition exists already
    assert p.carry_out(third) == [p.key(0)]
    stored = p.store().read_item(p.collection, IDS[0])
    assert stored.properties["updated"] == "2026-01-01T00:00:04Z" and stored.properties["eo:cloud_cover"] == 1.5
    assert [p.materializations(i) for i in range(3)] == [2, 1, 1]
    assert p.combine().metadata["items_changed"].value == 1
    assert p.combined_chips() == expected_chips(sample_catalog, p.collection, IDS)

    # a restarted code location resumes from the stored cursor: nothing is indexed twice
    restarted = p.definitions()
    assert not p.tick(third.cursor, restarted).run_requests
    # even a sensor reset to no cursor asks only for item versions already run: the run keys dedupe
    reset = p.tick(None, restarted)
    assert len(reset.run_requests) == 3 and p.carry_out(reset) == []
    assert [p.materializations(i) for i in range(3)] == [2, 1, 1]


def test_stac_api_outage_fails_the_tick_keeps_the_cursor_and_then_catches_up(pipeline, sample_catalog):
    p = pipeline
    p.publish(0, "2026-01-01T00:00:01Z")
    first = p.tick(None)
    assert p.carry_out(first) == [p.key(0)]

    p.api.stop_api()
    try:
        # an item arrives in the catalogue database while its API is down
        p.api.insert_item_in_database(p.item(1, "2026-01-01T00:00:02Z"))
        context = dg.build_sensor_context(instance=p.instance, cursor=first.cursor, definitions=p.defs, resources=p.resources)
        started = time.monotonic()
        with pytest.raises(StacSourceError) as failure:
            sensor_of(p.defs)(context)
        assert time.monotonic() - started < 30
        message = str(failure.value)
        assert f"polling STAC API {p.api.url} failed, cursor kept" in message
        assert "the server is not reachable" in message, message
        assert context.cursor == first.cursor
    finally:
        p.api.start_api()

    caught_up = p.tick(first.cursor)
    assert p.carry_out(caught_up) == [p.key(1)]
    assert parse_cursor(caught_up.cursor)[p.collection] == ("2026-01-01T00:00:02.000000Z", IDS[1])
    p.combine()
    assert p.combined_chips() == expected_chips(sample_catalog, p.collection, IDS[:2])


def test_signed_hrefs_reach_a_server_that_demands_a_token(pipeline, sample_catalog, tmp_path):
    """The href signer of the storage resource is applied to every asset href before GDAL opens it
    (Planetary Computer's `planetary_computer:sign` plugs in the same way); the token never shows in
    error messages."""
    log = tmp_path / "requests.log"
    with serve_directory(str(sample_catalog.parent), require_token=TEST_TOKEN, request_log=str(log)) as url:
        item = pystac.Item.from_dict(item_json(sample_catalog, S2, IDS[0], S2, url, assets=ASSETS))
        local = expected_chips(sample_catalog, S2, IDS[:1])

        with gdal_env(AssetAccess()), pytest.raises(AssetReadError, match="403") as unsigned:
            Indexer(item, kind="sentinel-2").create_index()
        assert "access refused" in str(unsigned.value)

        signed = AssetAccess(href_signer="tests.support.http_server:sign_with_test_token")
        with gdal_env(signed):
            table = Indexer(item, kind="sentinel-2").create_index()
            pixels = Chipper(Indexer(item, kind="sentinel-2"), assets=["red"]).chip(0, 0)["red"]
            missing = item.clone()
            missing.assets["red"].href = f"{url}/{S2}/{IDS[0]}/no-such-band.tif"
            with pytest.raises(AssetReadError) as not_found:
                Chipper(Indexer(missing, kind="sentinel-2"), assets=["red"]).chip(0, 0)
        assert {(S2, c): v for c, v in zip(table.column("chipid").to_pylist(), zip(
            table.column("cloud_cover_percentage").to_pylist(), table.column("nodata_percentage").to_pylist()))} == local
        with Chipper(Indexer(local_item(sample_catalog, S2, IDS[0]), kind="sentinel-2"), assets=["red"]) as chipper:
            assert (chipper.chip(0, 0)["red"] == pixels).all()
        assert "no-such-band.tif" in str(not_found.value) and "stacchip-test-token" not in str(not_found.value)
        requests_seen = log.read_text().splitlines()
        assert any(line.startswith(f"GET /{S2}/{IDS[0]}/scl.tif?{TEST_TOKEN} bytes=") and line.endswith(" 206")
                   for line in requests_seen), requests_seen[:5]

        # the same through the Dagster resource: chip_index runs with the signer configured
        p = pipeline
        p.href_base = url
        p.use_storage(StorageResource(base=p.storage.base, href_signer="tests.support.http_server:sign_with_test_token"))
        p.publish(0, "2026-01-01T00:00:01Z")
        assert p.carry_out(p.tick(None)) == [p.key(0)]


def test_the_dagster_dev_daemon_runs_the_sensor(dagster_dev_server, stac_api, cog_server, sample_catalog):
    """Under `dagster dev`: the daemon's sensor sees a newly posted item and its chip_index run succeeds."""
    server = dagster_dev_server
    item = item_json(sample_catalog, S2, IDS[1], DAGSTER_DEV_COLLECTION, cog_server,
                     updated="2026-02-01T00:00:00Z", assets=ASSETS)
    stac_api.post_item(item)
    key = item_partition_key(DAGSTER_DEV_COLLECTION, IDS[1])
    run = server.wait_for_run(tags={"dagster/partition": key}, timeout=180)
    assert run["jobName"] == "chip_index_job"
    assert run["tags"]["dagster/sensor_name"] == SENSOR
    assert run["tags"]["dagster/run_key"] == f"{key}@2026-02-01T00:00:00.000000Z"
    index = server.home / "stacchip" / "index" / DAGSTER_DEV_COLLECTION / IDS[1] / f"index_{IDS[1]}.parquet"
    assert index.is_file()
    assert json.loads((server.home / "stacchip" / DAGSTER_DEV_COLLECTION / IDS[1] / "stac_item.json").read_text())[
        "assets"]["scl"]["href"].startswith(cog_server)
