"""The asset graph on a real temporary Dagster instance and a copy of the sample catalog."""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pystac
import pytest
from dagster._core.definitions.data_version import StaleStatus  # no public export; what the UI shows
from PIL import Image

from stacchip_assets import Indexer
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.item_index import table_hash
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import (
    ALL_KEYS,
    Graph,
    copy_catalog,
    edit_item,
    in_memory_instance,
    index_everything,
    item_json_path,
    shared_sample,
)

S2 = "sentinel-2-l2a"
S2_ITEM = "S2B_31UDQ_20230704_0_L2A"
S2_KEY = f"{S2}/{S2_ITEM}"
METADATA_KEYS = {
    "dagster/row_count", "dagster/column_schema", "chips_kept", "chips_dropped", "chips_total",
    "cloud_cover_distribution", "nodata_distribution", "path", "summary", "quicklook", "quicklook_path",
    "stac_item_id", "stac_item_updated", "stac_item_href", "stored_item", "chip_settings", "indexer",
}


def direct_indexes(catalog: Path) -> dict[tuple[str, str], set[str]]:
    """(collection, item_id) -> chip ids, from the core library run directly on the catalog."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for collection, ids in SAMPLE_COLLECTIONS.items():
            for item_id in ids:
                item = pystac.Item.from_file(str(item_json_path(catalog, collection, item_id)))
                out[(collection, item_id)] = set(Indexer(item).create_index().column("chipid").to_pylist())
    return out


def combined_snapshot(graph: Graph) -> dict[str, bytes]:
    root = Path(graph.base) / "combined"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.parquet")}


@pytest.fixture(scope="module")
def full(sample_graph):
    """Every partition materialized, then the combined index: the session's shared sample graph (read-only:
    the tests that materialize anything use `fresh`)."""
    return sample_graph


@pytest.fixture()
def fresh(tmp_path, tmp_path_factory):
    catalog = copy_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog")
    with in_memory_instance() as instance:
        yield Graph(catalog, tmp_path / "base", instance)


def test_combined_index_has_exactly_the_chips_of_every_item(full):
    expected = direct_indexes(full.catalog)
    table = CombinedIndex(Storage(full.base)).read()
    assert table.num_rows == sum(len(ids) for ids in expected.values())
    assert set(zip(table.column("collection").to_pylist(), table.column("chipid").to_pylist())) == {
        (c, chip) for (c, _), ids in expected.items() for chip in ids
    }
    for (collection, item_id), ids in expected.items():  # each per-item index too
        per_item = Storage(full.base).read_index(collection, item_id)
        assert set(per_item.column("chipid").to_pylist()) == ids
    combined = full.latest("combined_index")
    assert combined.metadata["dagster/row_count"].value == table.num_rows
    assert combined.metadata["items"].value == len(expected)
    assert Path(combined.metadata["path"].value) == Path(full.base) / "combined"


def test_chip_index_metadata_and_checks(full):
    for key in ALL_KEYS:
        meta = full.latest("chip_index", key).metadata
        assert METADATA_KEYS <= set(meta), key
        collection, item_id = key.split("/", 1)
        assert meta["stac_item_id"].value == item_id
        assert meta["stac_item_href"].value == str(item_json_path(full.catalog, collection, item_id))
        assert meta["chips_kept"].value + meta["chips_dropped"].value == meta["chips_total"].value
        assert {c.name for c in meta["dagster/column_schema"].schema.columns} >= {"chipid", "geometry", "item_href"}
        assert meta["chip_settings"].value["chip_size"] == 256
        index = Storage(full.base).read_index(collection, item_id)
        assert meta["dagster/row_count"].value == index.num_rows
        assert Path(meta["path"].value).is_file()
        if index.num_rows:
            assert 0.0 <= meta["cloud_cover_distribution"].value["min"] <= meta["cloud_cover_distribution"].value["max"] <= 1.0
    s2 = full.latest("chip_index", S2_KEY)
    assert s2.metadata["chips_dropped"].value > 0 and s2.metadata["cloud_cover_distribution"].value["max"] > 0
    checks = full.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("chip_index"), "stats_in_unit_interval"), limit=100)
    assert len(checks) == len(ALL_KEYS)
    for name in ("non_empty_or_explained", "geometries_valid_and_inside_footprint", "stats_in_unit_interval"):
        history = full.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("chip_index"), name), limit=100)
        assert all(r.evaluation.passed for r in history), name
    for name in ("unique_chip_ids", "every_materialized_item_present", "row_count_equals_sum", "combined_geometries_valid"):
        history = full.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("combined_index"), name), limit=1)
        assert history and history[0].evaluation.passed, name


def test_quicklook_is_a_real_image(full):
    meta = full.latest("chip_index", S2_KEY).metadata
    match = re.fullmatch(r"!\[quicklook\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", meta["quicklook"].value)
    assert match
    png = base64.b64decode(match.group(1))
    assert Path(meta["quicklook_path"].value).read_bytes() == png
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (320, 320)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 8  # chips in several cloud colours, grey dropped chips, outline, colour bar
    assert (pixels != 255).any(axis=1).mean() > 0.3  # not blank: a good part is covered by chips


def test_data_versions_and_staleness(full):
    meta = full.latest("chip_index", S2_KEY)
    index = Storage(full.base).read_index(S2, S2_ITEM)
    assert meta.tags["dagster/data_version"] == table_hash(index)
    assert full.stale_status("combined_index") == StaleStatus.FRESH


def test_stac_items_asset(fresh):
    full = fresh  # stac_items is upstream of chip_index: materializing it on the shared graph would make that stale
    result = dg.materialize([full.assets["stac_items"]], partition_key=S2, instance=full.instance,
                            resources=full.resources)
    assert result.success
    meta = full.latest("stac_items").metadata
    assert meta["count"].value == 3
    assert meta["time_span"].value.startswith("2023-07-04") and "2023-08-26" in meta["time_span"].value
    assert "| item | datetime |" in meta["items"].value and S2_ITEM in meta["items"].value
    stored = pystac.Item.from_file(str(Path(full.base) / S2 / S2_ITEM / "stac_item.json"))
    assert "coastal" not in stored.assets and "scl" in stored.assets  # the preset's assets + the mask
    assert Path(meta["path"].value).is_file()


def test_reindexing_replaces_one_item_and_leaves_the_rest(fresh):
    index_everything(fresh)
    before = combined_snapshot(fresh)
    first_version = fresh.latest("combined_index").tags["dagster/data_version"]
    small = fresh.with_chip_settings(chip_size=128)
    assert small.index(S2_KEY).success
    assert fresh.stale_status("combined_index") == StaleStatus.STALE
    result = fresh.combine()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    after = combined_snapshot(fresh)
    assert {k for k in after if after[k] != before.get(k)} == {f"{S2}/{S2_ITEM}.parquet"}
    meta = fresh.latest("combined_index").metadata
    assert meta["items_changed"].value == 1
    assert fresh.latest("combined_index").tags["dagster/data_version"] != first_version
    assert fresh.stale_status("combined_index") == StaleStatus.FRESH
    table = CombinedIndex(Storage(fresh.base)).read().to_pandas()
    mine = table[table.item_id == S2_ITEM]
    assert set(mine.chip_size) == {128} and len(mine) == Storage(fresh.base).read_index(S2, S2_ITEM).num_rows
    assert len(table) == meta["dagster/row_count"].value
    assert set(table[table.item_id != S2_ITEM].chip_size) == {256}
    # nothing changed since: an update changes nothing and keeps the data version
    version = fresh.latest("combined_index").tags["dagster/data_version"]
    assert fresh.combine().success
    assert fresh.latest("combined_index").metadata["items_changed"].value == 0
    assert fresh.latest("combined_index").tags["dagster/data_version"] == version
    # a full rebuild from the files agrees
    assert fresh.combine(full_rebuild=True).success
    assert fresh.latest("combined_index").metadata["dagster/row_count"].value == len(table)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_a_failed_run_leaves_the_previous_files_intact(fresh):
    index_everything(fresh)
    storage = Storage(fresh.base)
    keys = [Storage.index_key(S2, S2_ITEM), Storage.item_key(S2, S2_ITEM), Storage.quicklook_key(S2, S2_ITEM)]
    before = {k: Path(storage.path(k)).read_bytes() for k in keys}
    combined_before = combined_snapshot(fresh)
    # the item is updated and its mask COG is now truncated (real bytes cut, as by an interrupted copy)
    edit_item(fresh.catalog, S2, S2_ITEM, updated="2026-01-01T00:00:00Z")
    truncate(item_json_path(fresh.catalog, S2, S2_ITEM).parent / "scl.tif")
    result = fresh.index(S2_KEY, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "AssetReadError" in failure.event_specific_data.error.message
    assert {k: Path(storage.path(k)).read_bytes() for k in keys} == before
    assert not [p for p in Path(fresh.base).rglob(".*") if p.is_file()]  # no temporary files left
    assert combined_snapshot(fresh) == combined_before
    # the combined index still updates (nothing new) and keeps the item's previous rows
    result = fresh.combine()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert combined_snapshot(fresh) == combined_before
    assert Path(storage.path(combined_key(S2, S2_ITEM))).read_bytes() == before[keys[0]]


def test_combined_index_follows_new_items_despite_a_failed_one(fresh):
    """The combined trigger (combined_trigger.decide) is not blocked by an item that failed: it asks
    for a combined run as soon as a materialization is beyond the combined cursor, and only then."""
    from stacchip_assets.dagster_defs.combined_trigger import decide

    fresh.add_partitions()
    assert decide(fresh.instance)[0] is None  # nothing indexed yet
    truncate(item_json_path(fresh.catalog, S2, S2_ITEM).parent / "scl.tif")
    for key in ALL_KEYS:
        assert fresh.index(key, raise_on_error=False).success == (key != S2_KEY)
    request, _reason, state = decide(fresh.instance)
    assert request is not None and set(state.items) == set(ALL_KEYS) - {S2_KEY}  # not blocked by the failed item
    assert fresh.combine().success
    assert decide(fresh.instance)[0] is None
    assert fresh.index("naip/me_m_4406901_ne_19_060_20211006").success
    request, _reason, state = decide(fresh.instance)
    assert request is not None and state.items == ("naip/me_m_4406901_ne_19_060_20211006",)
    # the failed item is simply absent, and the checks agree
    result = fresh.combine()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert (S2, S2_ITEM) not in CombinedIndex(Storage(fresh.base)).items()


def test_combined_index_keeps_the_compacted_tier_up_to_date(fresh):
    from stacchip_assets.index.compaction import load_manifest
    from stacchip_assets.index.query import query_chips

    def chips(layout: str) -> list[tuple[str, str, int]]:
        table = query_chips(fresh.base, columns=["collection", "chipid", "chip_size"], layout=layout)
        return sorted(zip(*(table.column(c).to_pylist() for c in ("collection", "chipid", "chip_size"))))

    index_everything(fresh)  # default "auto": the tier is not enabled for this base, nothing is compacted
    meta = fresh.latest("combined_index").metadata
    assert meta["compaction"].value["ran"] is False and "not enabled" in meta["compaction"].value["reason"]
    assert meta["compacted_tier"].value == {"enabled": False}
    assert load_manifest(Storage(fresh.base)) is None
    total = meta["dagster/row_count"].value
    # enabling it compacts the whole per-item layout once
    assert fresh.combine(compaction="enable").success
    meta = fresh.latest("combined_index").metadata
    report, tier = meta["compaction"].value, meta["compacted_tier"].value
    assert report["ran"] and report["items_compacted"] == len(ALL_KEYS) and report["delta_rows"] == total
    assert tier["enabled"] and tier["pending_items"] == 0 and tier["run_rows"] == total and tier["runs"] >= 1
    assert "Compacted tier:" in meta["summary"].value
    assert chips("compacted") == chips("per-item")
    # nothing new: nothing to compact
    assert fresh.combine().success
    assert fresh.latest("combined_index").metadata["compaction"].value == {"mode": "auto", "ran": False,
                                                                           "reason": "no pending items"}
    # one item re-indexed (128 px chips): the next automatic update folds in exactly that item
    assert fresh.with_chip_settings(chip_size=128).index(S2_KEY).success
    assert fresh.combine().success
    meta = fresh.latest("combined_index").metadata
    report, tier = meta["compaction"].value, meta["compacted_tier"].value
    new_rows = Storage(fresh.base).read_index(S2, S2_ITEM).num_rows
    assert report["ran"] and report["items_compacted"] == 1 and report["delta_rows"] == new_rows
    assert tier["pending_items"] == 0 and tier["run_rows"] == meta["dagster/row_count"].value
    compacted = chips("compacted")
    assert compacted == chips("per-item")
    assert {size for c, chip, size in compacted if chip.startswith(S2_ITEM)} == {128}
    # "off" leaves the item pending; the query still reads it from its per-item file
    landsat = "landsat-c2-l2/LC09_L2SP_107030_20230712_02_T1"
    assert fresh.with_chip_settings(chip_size=128).index(landsat).success
    assert fresh.combine(compaction="off").success
    meta = fresh.latest("combined_index").metadata
    assert meta["compaction"].value["ran"] is False and meta["compacted_tier"].value["pending_items"] == 1
    assert chips("compacted") == chips("per-item")
    assert fresh.combine().success  # the next automatic update catches up
    assert fresh.latest("combined_index").metadata["compacted_tier"].value["pending_items"] == 0
