"""Untrusted STAC sources (issue 11 part B, issue 15's unlinked items): a malformed item beside good
ones is skipped and reported by name, never failing its neighbours or the collection's poll; the
cursor only takes validated times (no far future, no file mtime); a STAC API whose `next` link
loops is stopped. On a real static catalog (files) and a real STAC API (stac-fastapi-pgstac), the
looping API behind tests/support/fault_proxy.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import (
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    build_definitions,
    item_partition_key,
)
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.sensors import cursor_reports, parse_cursor
from stacchip_assets.errors import StacSourceError
from stacchip_assets.index.item_index import ChipSettings
from stacchip_assets.io.source_guards import SourceReport
from stacchip_assets.io.stac_source import (
    SearchParams,
    StacApiSource,
    StaticCatalogSource,
    canonical_time,
)

from tests.support.dagster_support import in_memory_instance
from tests.support.fault_proxy import fault_proxy
from tests.support.servers import load_items, synthetic_collection, synthetic_item

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


def when(n: int) -> str:
    return (T0 + dt.timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def good_items(collection: str, n: int, first: int = 0) -> list[dict]:
    return [synthetic_item(collection, i, when(i)) for i in range(first, first + n)]


def poison(collection: str, name: str, number: int, **properties) -> dict:
    """A synthetic item with id `{collection}-{name}` and `properties` changed (None removes one)."""
    item = synthetic_item(collection, number, when(number))
    item["id"] = f"{collection}-{name}"
    for key, value in properties.items():
        if value is None:
            item["properties"].pop(key, None)
        else:
            item["properties"][key] = value
    return item


#: Bad items a STAC API (pgstac) stores as they are, and the reason each is skipped with.
@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


API_POISONS = {
    "updated-number": ({"updated": 12345}, "not a text time"),
    "updated-feb30": ({"updated": "2024-02-30T10:00:00Z"}, "unparseable time"),
    "updated-year0": ({"updated": "0000-01-01T00:00:00Z"}, "unparseable time"),
    "updated-overflow": ({"updated": "99999-01-01T00:00:00Z"}, "unparseable time"),
    "far-future": ({"updated": "2999-01-01T00:00:00Z"}, "lies in the future"),
}


def sensor_tick(defs: dg.Definitions, instance, resources: dict, cursor: str | None) -> dg.SensorResult:
    sensor = next(s for s in defs.sensors if s.name == "stac_item_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def ticks_until_quiet(defs, instance, resources, cursor=None, max_ticks=20):
    """Evaluate the sensor until a tick requests nothing: (requests, cursors of every tick)."""
    requests, cursors = [], []
    for _ in range(max_ticks):
        result = sensor_tick(defs, instance, resources, cursor)
        cursor = result.cursor
        cursors.append(cursor)
        if not result.run_requests:
            return requests, cursors
        requests += result.run_requests
    raise AssertionError(f"the sensor still requested runs after {max_ticks} ticks")


# -- a static catalog with every kind of bad item -------------------------------------------------

def write_static_catalog(folder: Path, collection: str, good: list[dict], bad: dict[str, object]) -> Path:
    """catalog.json -> {collection}/collection.json -> one folder per item (bad ones as given: a dict
    is written as JSON, a str as the file's text); also one valid item file no link reaches."""
    coll_dir = folder / collection
    links = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
    for name, content in [(i["id"], i) for i in good] + list(bad.items()):
        path = coll_dir / name / f"{name}.json"
        path.parent.mkdir(parents=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        links.append({"rel": "item", "href": f"./{name}/{name}.json", "type": "application/geo+json"})
    stray = synthetic_item(collection, 999, when(999))
    stray["id"] = f"{collection}-stray"
    (coll_dir / "stray").mkdir()
    (coll_dir / "stray" / "stray.json").write_text(json.dumps(stray))
    (coll_dir / "collection.json").write_text(json.dumps({**synthetic_collection(collection), "links": links}))
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "untrusted", "description": "bad items beside good",
               "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "child", "href": f"./{collection}/collection.json"}]}
    (folder / "catalog.json").write_text(json.dumps(catalog))
    return folder / "catalog.json"


STATIC = "static-untrusted"


@pytest.fixture()
def static_catalog(tmp_path):
    good = good_items(STATIC, 5)
    no_updated = poison(STATIC, "no-updated", 50, updated=None)  # a good item: ordered by its datetime
    no_id = poison(STATIC, "x", 60)
    del no_id["id"]
    bad: dict[str, object] = {f"{STATIC}-{name}": poison(STATIC, name, 10 + k, **props)
                              for k, (name, (props, _)) in enumerate(API_POISONS.items())}
    bad.update({
        f"{STATIC}-datetime-year0": poison(STATIC, "datetime-year0", 20, datetime="0000-01-01T00:00:00Z"),
        f"{STATIC}-datetime-feb30": poison(STATIC, "datetime-feb30", 21, datetime="2023-02-30T10:00:00Z"),
        f"{STATIC}-bad-id": {**poison(STATIC, "y", 22), "id": "bad id/../x"},
        "no-id": no_id,
        "garbage": "{ not json",
        "not-a-feature": "[1, 2, 3]",
        no_updated["id"]: no_updated,
    })
    catalog = write_static_catalog(tmp_path / "catalog", STATIC, good, bad)
    return catalog, good, no_updated


STATIC_SKIPPED = {  # how the report names each bad item -> a word of its reason
    f"'{STATIC}-updated-number'": "not a text time",
    f"'{STATIC}-updated-feb30'": "unparseable time",
    f"'{STATIC}-updated-year0'": "unparseable time",
    f"'{STATIC}-updated-overflow'": "unparseable time",
    f"'{STATIC}-far-future'": "lies in the future",
    f"'{STATIC}-datetime-year0'": "unparseable time",
    f"'{STATIC}-datetime-feb30'": "unparseable time",
    "'bad id/../x'": "cannot be used as a path segment",
    "no-id.json": "no text id",
    "garbage.json": "unreadable item file",
    "not-a-feature.json": "not a STAC item",
}


def assert_reported(report_lines: list[str], expected: dict[str, str]) -> None:
    text = "\n".join(report_lines)
    for name, reason in expected.items():
        line = next((x for x in report_lines if name in x), None)
        assert line is not None, f"{name} not reported in:\n{text}"
        assert reason in line, line


def test_static_catalog_poll_and_search_skip_each_bad_item_and_report_it(static_catalog):
    catalog, good, no_updated = static_catalog
    source = StaticCatalogSource(catalog)
    report = SourceReport()
    polled = source.poll(STATIC, report=report)
    expected = sorted([(canonical_time(i["properties"]["updated"]), i["id"]) for i in good]
                      + [(canonical_time(no_updated["properties"]["datetime"]), no_updated["id"])])
    assert [p.position for p in polled] == expected
    assert report.skipped_count == len(STATIC_SKIPPED)
    assert_reported(report.lines(100), STATIC_SKIPPED)
    # issue 15: a valid item file no link reaches is reported by name, not picked up
    assert any("stray.json" in w and f"{STATIC}-stray" in w and "linked from no catalog" in w for w in report.warnings)
    assert f"{STATIC}-stray" not in {p.item_id for p in polled}

    report = SourceReport()
    assert sorted(i.id for i in source.search(STATIC, report=report)) == sorted(i for _, i in expected)
    assert report.skipped_count == len(STATIC_SKIPPED)
    # one item by id: a good one is found; a bad one's error says why it was not
    assert source.get_item(STATIC, good[0]["id"]).id == good[0]["id"]
    with pytest.raises(StacSourceError, match="malformed.*not a text time"):
        source.get_item(STATIC, f"{STATIC}-updated-number")


def static_defs(catalog: Path, base: Path):
    config = CollectionConfig(collection=STATIC, search=SearchParams(), chips=ChipSettings(indexer="nostats"))
    resources = {"stac_source": StacSourceResource(catalog_path=str(catalog)),
                 "storage": StorageResource(base=str(base)), "chip_settings": ChipSettingsResource()}
    return build_definitions(collections=[config], resources=resources), resources


def test_static_catalog_sensor_requests_the_good_items_and_reports_the_bad(static_catalog, tmp_path):
    catalog, good, no_updated = static_catalog
    defs, resources = static_defs(catalog, tmp_path / "base")
    with in_memory_instance() as instance:
        first = sensor_tick(defs, instance, resources, None)
        keys = {r.partition_key for r in first.run_requests}
        assert keys == {item_partition_key(STATIC, i["id"]) for i in good + [no_updated]}
        # the cursor is the newest validated time, not the far-future item's
        newest = max(canonical_time(i["properties"]["updated"]) for i in good)
        assert parse_cursor(first.cursor)[STATIC] == (newest, good[-1]["id"])
        assert_reported(cursor_reports(first.cursor)[STATIC], {
            f"'{STATIC}-far-future'": "lies in the future", f"'{STATIC}-updated-number'": "not a text time",
            "garbage.json": "unreadable"})
        # the next tick: nothing new, the bad items are still reported
        second = sensor_tick(defs, instance, resources, first.cursor)
        assert not second.run_requests and parse_cursor(second.cursor) == parse_cursor(first.cursor)
        assert f"{STATIC}-far-future" in second.skip_reason.skip_message

        # the stac_items asset: the good items, and the skipped ones in its metadata
        stac_items = next(a for a in defs.assets if a.key == dg.AssetKey("stac_items"))
        result = dg.materialize([stac_items], partition_key=STATIC, instance=instance, resources=resources)
        metadata = result.asset_materializations_for_node("stac_items")[0].metadata
        assert metadata["count"].value == len(good) + 1
        assert metadata["skipped_items"].value == len(STATIC_SKIPPED)
        problems = metadata["source_problems"].value
        assert all(name in problems for name in STATIC_SKIPPED) and "stray.json" in problems


def test_missing_updated_never_moves_the_cursor_past_later_items(tmp_path):
    """An item without `updated` is ordered by its own datetime: a new item published afterwards with
    an `updated` before the file's mtime is still found (a file-mtime cursor would have skipped it)."""
    good = good_items(STATIC, 3)
    no_updated = poison(STATIC, "no-updated", 40, updated=None, datetime="2024-06-01T00:00:00Z")
    catalog = write_static_catalog(tmp_path / "catalog", STATIC, good, {no_updated["id"]: no_updated})
    defs, resources = static_defs(catalog, tmp_path / "base")
    with in_memory_instance() as instance:
        first = sensor_tick(defs, instance, resources, None)
        assert len(first.run_requests) == 4
        assert parse_cursor(first.cursor)[STATIC] == (canonical_time(good[-1]["properties"]["updated"]), good[-1]["id"])
        # publish an item updated an hour ago (after every item time, before the files' mtimes)
        later = synthetic_item(STATIC, 77, canonical_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
        path = catalog.parent / STATIC / later["id"] / f"{later['id']}.json"
        path.parent.mkdir()
        path.write_text(json.dumps(later))
        collection_json = catalog.parent / STATIC / "collection.json"
        data = json.loads(collection_json.read_text())
        data["links"].append({"rel": "item", "href": f"./{later['id']}/{later['id']}.json"})
        collection_json.write_text(json.dumps(data))
        mtime = time.time() + 60  # the item without `updated` was touched after the new item's time
        os.utime(catalog.parent / STATIC / no_updated["id"] / f"{no_updated['id']}.json", (mtime, mtime))
        second = sensor_tick(defs, instance, resources, first.cursor)
        assert [r.partition_key for r in second.run_requests] == [item_partition_key(STATIC, later["id"])]


# -- pgstac ---------------------------------------------------------------------------------------

API = "api-untrusted"
N_GOOD = 500


@pytest.fixture(scope="module")
def poisoned_api(stac_api, tmp_path_factory):
    """500 good items and one of each storable bad kind (and one id unusable as a path), in pgstac."""
    stac_api.delete_collection(API)
    stac_api.create_collection(synthetic_collection(API))
    good = good_items(API, N_GOOD)
    bad = [poison(API, name, 100 + k, **props) for k, (name, (props, _)) in enumerate(API_POISONS.items())]
    bad.append({**poison(API, "z", 200), "id": "bad id with spaces"})
    load_items(stac_api, good + bad, tmp_path_factory.mktemp("untrusted-items"))
    yield good, bad
    stac_api.delete_collection(API)


def api_setup(url: str, tmp_path, cap: int = 200, page_size: int = 100):
    config = CollectionConfig(collection=API, search=SearchParams(), chips=ChipSettings(indexer="nostats"))
    resources = {"stac_source": StacSourceResource(api_url=url, max_items_per_tick=cap, page_size=page_size),
                 "storage": StorageResource(base=str(tmp_path / "base")), "chip_settings": ChipSettingsResource()}
    return build_definitions(collections=[config], resources=resources), resources


API_REPORTED = {f"'{API}-{name}'": reason for name, (_, reason) in API_POISONS.items()}
API_REPORTED["'bad id with spaces'"] = "cannot be used as a path segment"


def test_pgstac_search_skips_each_bad_item_and_reports_it(stac_api, poisoned_api):
    good, bad = poisoned_api
    report = SourceReport()
    found = StacApiSource(stac_api.url, page_size=100).search(API, report=report)
    assert sorted(i.id for i in found) == sorted(i["id"] for i in good)
    assert report.skipped_count == len(bad)
    assert_reported(report.lines(100), API_REPORTED)


def test_pgstac_sensor_requests_all_500_good_items_and_reports_the_poisoned_ones(stac_api, poisoned_api, tmp_path):
    """Acceptance 3 of issue 11: poisoned items among 500 good ones on pgstac."""
    good, bad = poisoned_api
    defs, resources = api_setup(stac_api.url, tmp_path)
    with in_memory_instance() as instance:
        requests, cursors = ticks_until_quiet(defs, instance, resources)
    keys = [r.partition_key for r in requests]
    assert sorted(keys) == sorted(item_partition_key(API, i["id"]) for i in good)  # each once
    reported = [line for c in cursors for line in cursor_reports(c).get(API, [])]
    assert_reported(reported, API_REPORTED)
    assert parse_cursor(cursors[-1])[API] == (canonical_time(good[-1]["properties"]["updated"]), good[-1]["id"])


def test_a_passed_tick_budget_stops_inside_the_paging(stac_api, poisoned_api):
    good, _ = poisoned_api
    report = SourceReport()
    polled = StacApiSource(stac_api.url, page_size=50).poll(API, limit=1000, report=report, deadline=time.monotonic())
    assert 0 < len(polled) <= 50 and "time budget ran out after page 1" in report.truncated
    ordered = sorted((canonical_time(i["properties"]["updated"]), i["id"]) for i in good)
    assert [p.position for p in polled] == ordered[: len(polled)]  # an oldest-first prefix: a safe cursor


def test_a_looping_next_link_is_stopped(stac_api, poisoned_api, tmp_path):
    """The API's next link points at the page itself: search raises, poll keeps the page it read and
    the sensor still works the whole collection off over a few ticks, each a bounded number of requests."""
    good, _ = poisoned_api
    with fault_proxy(stac_api.url) as proxy:
        proxy.configure(loop_next=True)
        source = StacApiSource(proxy.url, page_size=100)
        before = proxy.stats()["requests"]
        with pytest.raises(StacSourceError, match="paging loops: page 2 repeats the items of an earlier page"):
            source.search(API)
        assert proxy.stats()["requests"] - before <= 4  # the open, two pages (no retry of a loop)

        report = SourceReport()
        polled = source.poll(API, limit=1000, report=report)
        assert "paging loops" in report.truncated and "kept what was read" in report.truncated
        assert len(polled) + report.skipped_count == 100  # page 1 (its poisoned items skipped), not page 1 again
        ordered = sorted((canonical_time(i["properties"]["updated"]), i["id"]) for i in good)
        assert [p.position for p in polled] == ordered[: len(polled)]

        defs, resources = api_setup(proxy.url, tmp_path, cap=1000, page_size=100)
        with in_memory_instance() as instance:
            before = proxy.stats()["requests"]
            requests, cursors = ticks_until_quiet(defs, instance, resources)
        assert sorted(r.partition_key for r in requests) == sorted(item_partition_key(API, i["id"]) for i in good)
        assert len(cursors) <= N_GOOD // 99 + 3
        assert any("paging loops" in line for c in cursors for line in cursor_reports(c).get(API, []))
        assert proxy.stats()["looped"] > 0 and proxy.stats()["requests"] - before <= 4 * len(cursors)


def test_a_cursor_left_in_the_future_is_reported(tmp_path):
    """A cursor written before times were checked (far-future `updated`) hides every item: each tick says so."""
    from stacchip_assets.dagster_defs.sensors import dump_cursor

    catalog = write_static_catalog(tmp_path / "catalog", STATIC, good_items(STATIC, 2), {})
    defs, resources = static_defs(catalog, tmp_path / "base")
    stale = dump_cursor({STATIC: ("2999-01-01T00:00:00.000000Z", "old")})
    with in_memory_instance() as instance:
        result = sensor_tick(defs, instance, resources, stale)
    assert not result.run_requests
    assert any("lies in the future" in line and "reset" in line for line in cursor_reports(result.cursor)[STATIC])
    assert sensor_tick(defs, dg.DagsterInstance.ephemeral(), resources, None).run_requests  # without it: found


# -- generated malformed items (issue 11, acceptance 2, for `poll` and `search`) -------------------

def _time_values():
    from hypothesis import strategies as st

    texts = st.sampled_from(["0000-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "99999-01-01T00:00:00Z", "2024-13-01",
                             "", "yesterday", "2024-01-01T25:00:00Z", "9999-12-31T23:59:59-14:00", "1-01-01T00:00:00Z"])
    return st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), texts, st.text(max_size=30),
                     st.lists(st.integers(), max_size=3),
                     st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: d.isoformat()))


def test_generated_malformed_items_never_fail_the_poll(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = _time_values()
    fields = st.fixed_dictionaries({}, optional={"updated": values, "datetime": values, "created": values,
                                                 "start_datetime": values, "id": st.one_of(values, st.text(max_size=300))})

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(fields, min_size=1, max_size=4))
    def check(changes):
        folder = tmp_path_factory.mktemp("generated")
        good = good_items(STATIC, 1)
        bad = {}
        for k, change in enumerate(changes):
            item = poison(STATIC, f"gen{k}", 300 + k)
            for key, value in change.items():
                if key == "id":
                    item["id"] = value
                else:
                    item["properties"][key] = value
            bad[f"gen{k}"] = item
        source = StaticCatalogSource(write_static_catalog(folder, STATIC, good, bad))
        report = SourceReport()
        polled = source.poll(STATIC, report=report)  # never raises for a malformed item
        assert good[0]["id"] in {p.item_id for p in polled}
        assert len(polled) + report.skipped_count == 1 + len(changes)
        horizon = canonical_time(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1, minutes=1))
        assert all(p.updated <= horizon for p in polled)  # a cursor never goes into the future
        assert len(source.search(STATIC)) == len(polled)

    check()
