"""The item sensor works off a backlog on the real STAC API (stac-fastapi-pgstac): successive ticks,
with the cursor carried over, discover every item exactly once, oldest `updated` first, never more
than the per-tick cap, and only partitions the instance lacks are requested."""

from __future__ import annotations

import datetime as dt
import random

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
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.sensors import parse_cursor
from stacchip_assets.index.item_index import ChipSettings
from stacchip_assets.io.stac_source import SearchParams, canonical_time

from tests.support.servers import load_items, synthetic_collection, synthetic_item

COLLECTION = "paging-synthetic"
ITEMS = 1000
CAP = 250
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


def updated_of(position: int) -> str:
    """Four items share each `updated` time (a publisher's batch), so a tick boundary splits a batch."""
    return (T0 + dt.timedelta(seconds=position // 4)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def backlog(stac_api, tmp_path_factory):
    """1000 items whose id order is not their `updated` order, bulk-loaded into the STAC API."""
    stac_api.delete_collection(COLLECTION)
    stac_api.create_collection(synthetic_collection(COLLECTION))
    numbers = list(range(ITEMS))
    random.Random(7).shuffle(numbers)  # position in time -> item number
    items = [synthetic_item(COLLECTION, number, updated_of(position)) for position, number in enumerate(numbers)]
    load_items(stac_api, items, tmp_path_factory.mktemp("paging-items"))
    expected = sorted((canonical_time(i["properties"]["updated"]), i["id"]) for i in items)
    yield items, expected
    stac_api.delete_collection(COLLECTION)


@pytest.fixture()
def sensor_setup(stac_api, tmp_path):
    config = CollectionConfig(collection=COLLECTION, search=SearchParams(), chips=ChipSettings(indexer="nostats"))
    resources = {
        "stac_source": StacSourceResource(api_url=stac_api.url, max_items_per_tick=CAP),
        "storage": StorageResource(base=str(tmp_path / "base")),
        "chip_settings": ChipSettingsResource(),
    }
    defs = build_definitions(collections=[config], resources=resources)
    sensor = next(s for s in defs.sensors if s.name == "stac_item_sensor")
    with dg.instance_for_test() as instance:
        yield sensor, defs, resources, instance


def tick(setup, cursor):
    """One evaluation; its partition requests are applied to the instance, as the daemon does."""
    sensor, defs, resources, instance = setup
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_ticks_page_through_the_backlog_once_in_order(backlog, sensor_setup):
    items, expected = backlog
    instance = sensor_setup[3]
    cursor, seen, per_tick = None, [], []
    for _ in range(ITEMS // CAP + 3):
        result = tick(sensor_setup, cursor)
        runs = result.run_requests or []
        per_tick.append(len(runs))
        requested = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        assert requested == [r.partition_key for r in runs]  # all new: each item is requested once
        seen += runs
        assert result.cursor is not None
        cursor = result.cursor
        if not runs:
            break
    assert per_tick == [CAP] * (ITEMS // CAP) + [0]
    assert [(r.tags["stacchip/item_updated"], r.partition_key.split("/", 1)[1]) for r in seen] == expected
    assert [r.run_key for r in seen] == [f"{item_partition_key(COLLECTION, i)}@{u}" for u, i in expected]
    assert len({r.run_key for r in seen}) == ITEMS
    assert parse_cursor(cursor)[COLLECTION] == expected[-1]
    assert set(instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) == {
        item_partition_key(COLLECTION, i) for _, i in expected}

    # The backlog is worked off: the next tick skips, and keeps the cursor.
    again = tick(sensor_setup, cursor)
    assert not again.run_requests and again.cursor == cursor


def test_an_updated_item_gets_a_run_but_no_new_partition(backlog, sensor_setup, stac_api, tmp_path):
    items, expected = backlog
    cursor = None
    while True:
        result = tick(sensor_setup, cursor)
        cursor = result.cursor
        if not result.run_requests:
            break
    changed = dict(items[123], properties=dict(items[123]["properties"], updated="2025-06-01T00:00:00.000000Z"))
    fresh = synthetic_item(COLLECTION, ITEMS + 1, "2025-06-01T00:00:01.000000Z")
    load_items(stac_api, [changed, fresh], tmp_path, method="upsert")
    result = tick(sensor_setup, cursor)
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [item_partition_key(COLLECTION, changed["id"]), item_partition_key(COLLECTION, fresh["id"])]
    assert result.run_requests[0].run_key.endswith("@2025-06-01T00:00:00.000000Z")
    # the updated item's partition exists: only the new item's is requested
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[keys[1]]]
    # a restarted sensor (same cursor) asks for nothing more
    assert not tick(sensor_setup, result.cursor).run_requests
