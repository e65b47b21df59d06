"""Ingest at scale (issue 14): one sensor tick over 10,000 new items registers every partition in one
request and covers each item exactly once with runs over ranges of partitions; the next tick asks
for nothing; an item whose `updated` changes is asked for again, once. On a static catalog (polled
incrementally: the second tick reads no item file again) and on pgstac. Ranged runs are executed for
real on a small catalog: Dagster resolves each range to exactly the items planned, and a batch whose
item fails still indexes the rest. Tick times are printed (`-s`), never asserted."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from pathlib import Path

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import (
    ITEM_PARTITIONS_NAME,
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    build_definitions,
    item_partition_key,
)
from stacchip_assets.dagster_defs.batching import RANGE_START_TAG, requested_keys
from stacchip_assets.dagster_defs.presets import load_collections
from stacchip_assets.io.catalog_index import index_for
from stacchip_assets.io.stac_source import SearchParams, canonical_time

from tests.support.dagster_support import launch_tick_runs, shared_sample
from tests.support.servers import load_items, synthetic_collection, synthetic_item

NAIP = "naip"
NAIP_ITEM = "me_m_4406901_ne_19_060_20211006"
ITEMS = 10_000
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


def updated_of(position: int) -> str:
    """Four items share each `updated` (a publisher's batch)."""
    return (T0 + dt.timedelta(seconds=position // 4)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def naip_catalog(sample: Path, dest: Path, count: int, broken: set[int] = frozenset()) -> Path:
    """A static catalog with only a naip collection of `count` copies of the sample NAIP item (ids
    not in `updated` order; asset hrefs absolute to the sample's COGs), written without pystac. Copies
    in `broken` point their image outside the allowed folders (a per-item HrefPolicyError)."""
    src = sample.parent / NAIP
    template = json.loads((src / NAIP_ITEM / f"{NAIP_ITEM}.json").read_text())
    for asset in template["assets"].values():
        asset["href"] = str((src / NAIP_ITEM / asset["href"]).resolve()) if "://" not in asset["href"] else asset["href"]
    collection = json.loads((src / "collection.json").read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] not in ("item", "self")]
    numbers = list(range(count))
    random.Random(3).shuffle(numbers)
    folder = dest / NAIP
    folder.mkdir(parents=True)
    for position, number in enumerate(numbers):
        item_id = f"naip-copy-{number:05d}"
        item = dict(template, id=item_id, links=[], properties=dict(template["properties"], updated=updated_of(position)))
        if number in broken:
            outside = str(dest / "outside.tif")  # not in the allowed folders: HrefPolicyError for this item
            item["assets"] = {k: dict(v, href=outside) for k, v in template["assets"].items()}
        (folder / item_id).mkdir()
        (folder / item_id / f"{item_id}.json").write_text(json.dumps(item))
        collection["links"].append({"rel": "item", "href": f"./{item_id}/{item_id}.json", "type": "application/json"})
    (folder / "collection.json").write_text(json.dumps(collection))
    catalog = {"type": "Catalog", "id": "naip-copies", "stac_version": "1.0.0", "description": "copies",
               "links": [{"rel": "child", "href": f"./{NAIP}/collection.json", "type": "application/json"}]}
    (dest / "catalog.json").write_text(json.dumps(catalog))
    return dest / "catalog.json"


class Setup:
    """Definitions with one collection, a test instance, and ticks applied the way the daemon does."""

    def __init__(self, collection: str, stac_source: StacSourceResource, base: Path,
                 instance: dg.DagsterInstance) -> None:
        config = next(c for c in load_collections() if c.collection == NAIP)
        config = type(config)(collection=collection, search=SearchParams(), chips=config.chips)
        self.resources = {"stac_source": stac_source, "storage": StorageResource(base=str(base)),
                          "chip_settings": ChipSettingsResource()}
        self.defs = build_definitions(collections=[config], resources=self.resources)
        self.sensor = next(s for s in self.defs.sensors if s.name == "stac_item_sensor")
        self.instance = instance

    def tick(self, cursor: str | None) -> tuple[dg.SensorResult, float]:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=self.defs,
                                          resources=self.resources)
        started = time.monotonic()
        result = self.sensor(context)
        seconds = time.monotonic() - started
        for request in result.dynamic_partitions_requests or []:  # in order, as the daemon does
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, seconds

    def covered(self, result: dg.SensorResult) -> list[str]:
        partitions = list(self.instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME))
        return [k for run in result.run_requests or [] for k in requested_keys(run, partitions)]


def check_big_tick(setup: Setup, expected: list[tuple[str, str]], collection: str, label: str) -> str:
    """Ticks over `expected` ((updated, id), oldest first) until one asks for nothing; returns the cursor.

    One tick is expected to take every item. On a machine so loaded that the tick's time budget
    (40 s) runs out first, the listing is resumed by the next tick (a static catalog's file index
    keeps what was read; an API poll returns an oldest-first prefix): up to 3 ticks are accepted,
    and how many were needed is printed."""
    keys = [item_partition_key(collection, i) for _, i in expected]
    cursor, registered, runs, requests, times = None, [], [], 0, []
    for _ in range(4):
        result, seconds = setup.tick(cursor)
        times.append(round(seconds, 1))
        requests += len(result.dynamic_partitions_requests)
        registered += [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
        cursor = result.cursor
        if not result.run_requests and registered:
            break
        runs += result.run_requests
        if result.run_requests:
            covered = setup.covered(result)
            assert len(covered) == len(set(covered))
    working = len(times) - 1
    print(f"\n{label}: {len(keys)} new items: ticks {times} s ({working} with runs, then one asking for "
          f"nothing); {len(runs)} run requests, {requests} partition request(s)")
    assert not result.run_requests and not result.dynamic_partitions_requests  # the next tick: nothing
    assert 1 <= working <= 3 and requests == working  # one partition request per tick
    assert registered == keys  # oldest first: the order the ranges follow
    assert list(setup.instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) == keys
    partitions = list(setup.instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME))
    covered = [k for run in runs for k in requested_keys(run, partitions)]
    assert sorted(covered) == sorted(keys) and len(covered) == len(set(covered))  # each item exactly once
    assert len(runs) <= 200 and all(RANGE_START_TAG in r.tags for r in runs)
    assert len({r.run_key for r in runs}) == len(runs)
    assert sum(int(r.tags["stacchip/items"]) for r in runs) == len(keys)
    return cursor


def check_one_update(setup: Setup, cursor: str, collection: str, item_id: str, updated: str, label: str) -> None:
    result, seconds = setup.tick(cursor)
    print(f"{label}: tick after one item's `updated` changed: {seconds:.1f} s, {len(result.run_requests)} run request")
    key = item_partition_key(collection, item_id)
    assert [r.partition_key for r in result.run_requests] == [key]
    assert result.run_requests[0].run_key == f"{key}@{canonical_time(updated)}"
    assert not result.dynamic_partitions_requests  # the partition exists
    assert not setup.tick(result.cursor)[0].run_requests


@pytest.fixture(scope="module")
def big_static(tmp_path_factory):
    sample = shared_sample(tmp_path_factory)
    started = time.monotonic()
    catalog = naip_catalog(sample, tmp_path_factory.mktemp("big-static"), ITEMS)
    print(f"\nwrote {ITEMS} item files in {time.monotonic() - started:.1f} s")
    return catalog


def test_one_static_tick_over_10000_new_items(big_static, tmp_path):
    items = [json.loads(p.read_text()) for p in sorted((big_static.parent / NAIP).glob("*/*.json"))]
    expected = sorted((canonical_time(i["properties"]["updated"]), i["id"]) for i in items)
    with dg.instance_for_test() as instance:
        setup = Setup(NAIP, StacSourceResource(catalog_path=str(big_static)), tmp_path / "base", instance)
        time.sleep(2.1)  # files written within the racy window are re-read on every tick (catalog_index)
        index = index_for(f"{big_static}#{NAIP}")
        cursor = check_big_tick(setup, expected, NAIP, "static catalog")
        assert len(index) == ITEMS and index.misses >= ITEMS

        misses = index.misses
        setup.tick(cursor)
        assert index.misses == misses  # incremental: no item file is read again

        _, item_id = expected[5000]
        path = big_static.parent / NAIP / item_id / f"{item_id}.json"
        data = json.loads(path.read_text())
        data["properties"]["updated"] = "2025-09-01T00:00:00Z"
        path.write_text(json.dumps(data))
        check_one_update(setup, cursor, NAIP, item_id, "2025-09-01T00:00:00Z", "static catalog")


PGSTAC = "batching-synthetic"


@pytest.fixture(scope="module")
def big_pgstac(stac_api, tmp_path_factory):
    stac_api.delete_collection(PGSTAC)
    stac_api.create_collection(synthetic_collection(PGSTAC))
    numbers = list(range(ITEMS))
    random.Random(7).shuffle(numbers)
    items = [synthetic_item(PGSTAC, number, updated_of(position)) for position, number in enumerate(numbers)]
    load_items(stac_api, items, tmp_path_factory.mktemp("batching-items"))
    yield items
    stac_api.delete_collection(PGSTAC)


def test_one_pgstac_tick_over_10000_new_items(big_pgstac, stac_api, tmp_path):
    expected = sorted((canonical_time(i["properties"]["updated"]), i["id"]) for i in big_pgstac)
    with dg.instance_for_test() as instance:
        source = StacSourceResource(api_url=stac_api.url, page_size=1000, timeout_seconds=60)
        setup = Setup(PGSTAC, source, tmp_path / "base", instance)
        cursor = check_big_tick(setup, expected, PGSTAC, "pgstac")
        changed = dict(big_pgstac[77], properties=dict(big_pgstac[77]["properties"], updated="2025-09-01T00:00:00.000000Z"))
        load_items(stac_api, [changed], tmp_path, method="upsert")
        check_one_update(setup, cursor, PGSTAC, changed["id"], "2025-09-01T00:00:00.000000Z", "pgstac")


def test_ranged_runs_index_exactly_their_items_and_a_failed_item_spares_the_rest(tmp_path, tmp_path_factory,
                                                                                  monkeypatch):
    """Real runs over the sensor's ranges (Dagster resolves each range from the partitions' order): 25
    items in runs of 10; one broken item fails its run, whose other 9 items are indexed."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "10")
    catalog = naip_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog", 25, broken={7})
    with dg.instance_for_test() as instance:
        roots = [str(shared_sample(tmp_path_factory).parent)]  # the copies name the sample's COGs
        setup = Setup(NAIP, StacSourceResource(catalog_path=str(catalog), allowed_local_roots=roots), tmp_path / "base",
                      instance)
        result, _ = setup.tick(None)
        assert [int(r.tags["stacchip/items"]) for r in result.run_requests] == [10, 10, 5]
        planned = {r.run_key: requested_keys(r, list(instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)))
                   for r in result.run_requests}
        launched = launch_tick_runs(instance, setup.defs, dg.SensorResult(run_requests=result.run_requests),
                                    raise_on_error=False)
        broken = item_partition_key(NAIP, "naip-copy-00007")
        for request, outcome in launched:
            materialized = {e.partition for e in outcome.get_asset_materialization_events()
                            if e.asset_key == dg.AssetKey("chip_index")}
            assert materialized == set(planned[request.run_key]) - {broken}
            assert outcome.success == (broken not in planned[request.run_key])
        indexed = list((tmp_path / "base" / "index" / NAIP).glob("*/index_*.parquet"))
        assert len(indexed) == 24


def test_combined_index_declares_a_freshness_policy(monkeypatch):
    """FreshnessPolicy.time_window on combined_index (shown in the UI): STACCHIP_COMBINED_FRESHNESS_HOURS."""
    monkeypatch.setenv("STACCHIP_COMBINED_FRESHNESS_HOURS", "6")
    defs = build_definitions(collections=[])
    spec = defs.resolve_assets_def("combined_index").specs_by_key[dg.AssetKey("combined_index")]
    assert spec.freshness_policy == dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=6),
                                                                   warn_window=dt.timedelta(hours=3))


@pytest.mark.parametrize("value", ["x", "0", "-2", "inf"])
def test_a_bad_freshness_setting_is_named(monkeypatch, value):
    from stacchip_assets.errors import StacchipError

    monkeypatch.setenv("STACCHIP_COMBINED_FRESHNESS_HOURS", value)
    with pytest.raises(StacchipError, match=f"STACCHIP_COMBINED_FRESHNESS_HOURS must be a positive number of hours, got '{value}'"):
        build_definitions(collections=[])


def test_the_file_index_rereads_racy_and_rewritten_files(tmp_path):
    """A file written within RACY_SECONDS is not trusted by its identity; a rewrite of the same size
    with the mtime set back (an editor keeping times) still changes ctime: read again."""
    from stacchip_assets.io.catalog_index import FileOutcome, ItemFileIndex

    path = tmp_path / "item.json"
    path.write_text('{"updated": "A"}')
    index = ItemFileIndex()
    outcome, identity = index.get(str(path), "updated")
    assert outcome is None and identity is None  # racy: just written
    old = time.time() - 60
    os.utime(path, (old, old))
    _, identity = index.get(str(path), "updated")
    index.put(str(path), "updated", identity, FileOutcome(item_id="i", updated="A"))
    assert index.get(str(path), "updated")[0] == FileOutcome(item_id="i", updated="A")
    time.sleep(0.01)
    path.write_text('{"updated": "B"}')  # same size
    os.utime(path, (old, old))
    assert index.get(str(path), "updated")[0] is None
