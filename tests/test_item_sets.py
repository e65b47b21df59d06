"""Issue 17: the item sets are the source of truth -- the combined index holds exactly the chips of the
items currently in the item sets, indexed with the collection's current chip settings.

The library layer first (index.item_sets, index.set_rule) on a copy of the sample catalog, with real
per-item indexes read from the sample COGs; the Dagster wiring follows below.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pystac
import pytest

from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.item_index import ChipSettings, index_item
from stacchip_assets.index.item_sets import (
    SUPERSEDED,
    WITHDRAWN,
    ItemSet,
    SelectionState,
    offer_items,
    reconcile_item_set,
    settings_fingerprint,
    source_has,
)
from stacchip_assets.index.set_rule import ADD, REMOVE, REPLACE, WAIT, enforce, holds
from stacchip_assets.io.stac_source import SearchParams, StaticCatalogSource
from stacchip_assets.io.storage import Storage

from .dagster_support import copy_catalog

S2 = "sentinel-2-l2a"
OLD, UEQ, CLOUDY = "S2B_31UDQ_20230704_0_L2A", "S2B_31UEQ_20230704_0_L2A", "S2A_31UDQ_20230826_0_L2A"
NEW = "S2A_31UDQ_20230915_0_L2A"
#: the Sentinel-2 preset's rule: cloud cover below 50 %, least cloudy item per tile per quarter
RULE = SearchParams(query={"eo:cloud_cover": {"lt": 50}}, selection="least_cloudy_per_tile_quarter",
                    tile_properties=("grid:code", "s2:mgrs_tile"))
SETTINGS = ChipSettings(indexer="sentinel-2", chip_size=256, chip_max_nodata=0.5,
                        assets=("blue", "green", "red", "nir", "rededge1", "swir16"))


def publish_better_item(catalog_json: Path, new_id: str = NEW, cloud: float = 5.0) -> None:
    """A new item for tile 31UDQ in 2023 Q3 with `cloud` % cloud: a clone of CLOUDY's files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = pystac.Catalog.from_file(str(catalog_json))
        collection = catalog.get_child(S2)
        source = collection.get_item(CLOUDY)
        source.make_asset_hrefs_absolute()
        clone = source.clone()
        clone.id = new_id
        clone.datetime = clone.datetime.replace(month=9, day=15)
        clone.properties.update({"eo:cloud_cover": cloud, "updated": "2023-09-15T18:00:00.000Z"})
        collection.add_item(clone)
        catalog.normalize_hrefs(str(catalog_json.parent))
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


class Library:
    """search -> item set -> per-item indexes -> the rule, without Dagster."""

    def __init__(self, catalog_json: Path, base: Path, settings: ChipSettings = SETTINGS) -> None:
        self.source = StaticCatalogSource(str(catalog_json))
        self.storage = Storage(str(base))
        self.settings = settings
        self.known: dict[str, str | None] = {}

    def reconcile(self):
        items = self.source.search(S2, RULE)

        change = reconcile_item_set(self.storage, S2, items, params=RULE, settings=self.settings.to_dict(),
                                    in_source=lambda item_id: source_has(self.source, S2, item_id))
        ids = {i.id for i in items}
        return change, ids

    def index(self, item_id: str) -> int:
        return index_item(self.source.get_item(S2, item_id), self.storage, self.settings, collection=S2).chips_kept

    def combine(self, changed=()):
        result = enforce(self.storage, changed, known_settings=self.known)
        self.known = dict(result.plan.governed)
        return result

    def combined_ids(self) -> set[str]:
        return {i for c, i in CombinedIndex(self.storage).items() if c == S2}


@pytest.fixture()
def library(sample_catalog, tmp_path) -> Library:
    return Library(copy_catalog(sample_catalog, tmp_path / "catalog"), tmp_path / "base")


def test_better_item_evicts_exactly_the_item_it_replaces(library):
    change, ids = library.reconcile()
    assert ids == {OLD, UEQ} and sorted(change.added) == [OLD, UEQ]
    chips = {i: library.index(i) for i in ids}
    first = library.combine(changed=[(S2, i) for i in ids])
    assert {c.item_id for c in first.plan.of(ADD)} == ids and library.combined_ids() == ids
    assert holds(library.storage) == (True, {"missing": [], "extra": []})
    assert CombinedIndex(library.storage).num_rows() == sum(chips.values())

    publish_better_item(Path(library.source.catalog_path))
    change, ids = library.reconcile()
    assert ids == {NEW, UEQ}
    assert [(d.item_id, d.reason, d.by) for d in change.departed] == [(OLD, SUPERSEDED, NEW)]
    stored = ItemSet.load(library.storage, S2)
    assert set(stored.members) == {NEW, UEQ} and stored.departed[OLD].describe() == f"superseded by {NEW}"
    state = SelectionState.load(library.storage, S2)
    assert state.groups["MGRS-31UDQ|2023|Q3"]["id"] == NEW

    # before the new item is indexed: the superseded chips leave, the new item waits for chip_index
    between = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in between.plan.changes] == [
        (OLD, REMOVE, f"superseded by {NEW}"), (NEW, WAIT, "in the item set, not indexed yet")]
    assert library.combined_ids() == {UEQ}
    assert between.report.rows_removed == chips[OLD]
    assert holds(library.storage) == (False, {"missing": [f"{S2}/{NEW}"], "extra": []})

    chips[NEW] = library.index(NEW)
    after = library.combine(changed=[(S2, NEW)])
    assert [(c.item_id, c.action, c.reason) for c in after.plan.changes] == [
        (NEW, ADD, f"in the item set, supersedes {OLD}")]
    assert library.combined_ids() == {NEW, UEQ}
    assert CombinedIndex(library.storage).num_rows() == chips[NEW] + chips[UEQ]
    assert holds(library.storage)[0]


def test_withdrawn_item_leaves_and_a_republished_one_comes_back_once(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    item_json = Path(library.source.catalog_path).parent / S2 / UEQ / f"{UEQ}.json"
    saved = item_json.read_text()
    collection_json = item_json.parent.parent / "collection.json"
    links = json.loads(collection_json.read_text())
    withdrawn = dict(links, links=[link for link in links["links"] if UEQ not in link["href"]])
    collection_json.write_text(json.dumps(withdrawn))
    item_json.unlink()

    change, ids = library.reconcile()
    assert [(d.item_id, d.reason) for d in change.departed] == [(UEQ, WITHDRAWN)]
    result = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in result.plan.changes] == [(UEQ, REMOVE, "withdrawn from the source")]
    assert library.combined_ids() == {OLD} and holds(library.storage)[0]

    item_json.write_text(saved)
    collection_json.write_text(json.dumps(links))
    change, ids = library.reconcile()
    assert change.added == [UEQ] and not change.departed
    back = library.combine()  # its per-item index is still current: no re-indexing needed
    assert [(c.item_id, c.action) for c in back.plan.changes] == [(UEQ, ADD)]
    assert library.combine().plan.changes == []  # once
    assert library.combined_ids() == {OLD, UEQ} and holds(library.storage)[0]


def test_changed_chip_size_waits_for_reindexing_then_replaces(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    old_fp = settings_fingerprint(SETTINGS.to_dict())
    small = ChipSettings(**{**SETTINGS.to_dict(), "chip_size": 128, "assets": SETTINGS.assets})
    library.settings = small
    change, _ = library.reconcile()
    assert change.settings_changed == (old_fp, settings_fingerprint(small.to_dict()))
    waiting = library.combine()
    assert {c.item_id for c in waiting.plan.of(WAIT)} == ids and not waiting.plan.upserts
    assert library.combined_ids() == ids  # the old chips stay until they are replaced
    for item_id in ids:
        library.index(item_id)
    replaced = library.combine(changed=[(S2, i) for i in ids])
    assert {(c.item_id, c.action) for c in replaced.plan.changes} == {(i, REPLACE) for i in ids}
    sizes = set(CombinedIndex(library.storage).read(columns=["chip_size"]).column("chip_size").to_pylist())
    assert sizes == {128}


def test_a_file_added_by_hand_breaks_the_rule_and_is_removed(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    library.storage.copy(Storage.index_key(S2, OLD), combined_key(S2, "S2X_HANDMADE"))
    assert holds(library.storage) == (False, {"missing": [], "extra": [f"{S2}/S2X_HANDMADE"]})
    result = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in result.plan.changes] == [("S2X_HANDMADE", REMOVE, "not in the item set")]
    assert holds(library.storage)[0]


def test_incremental_selection_compares_with_the_tile_quarter_only(library):
    items = {i.id: i for i in library.source.search(S2, SearchParams())}
    first = offer_items(library.storage, S2, [items[OLD], items[UEQ]], params=RULE)
    assert sorted(first.added) == [OLD, UEQ] and not first.departed
    worse = offer_items(library.storage, S2, [items[CLOUDY]], params=RULE)
    assert worse.not_selected == [CLOUDY] and not worse.added
    publish_better_item(Path(library.source.catalog_path))
    better = library.source.get_item(S2, NEW)
    change = offer_items(library.storage, S2, [better], params=RULE)
    assert change.added == [NEW] and [(d.item_id, d.by) for d in change.departed] == [(OLD, NEW)]
    assert set(ItemSet.load(library.storage, S2).members) == {NEW, UEQ}
    # the same set as a full search selects
    assert {i.id for i in library.source.search(S2, RULE)} == {NEW, UEQ}


def test_per_item_index_records_its_chip_settings(library):
    library.index(OLD)
    metadata = pq.read_schema(library.storage.path(Storage.index_key(S2, OLD))).metadata
    assert metadata[b"stacchip:chip_settings"].decode() == settings_fingerprint(SETTINGS.to_dict())
