"""The combined index: one file per item, incremental updates that touch only the changed item."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.dataset as pads
import pytest

from stacchip_assets.errors import InvalidIdentifierError
from stacchip_assets.index.combined import CombinedIndex, combined_key, read_combined
from stacchip_assets.index.item_index import ChipSettings, index_item
from stacchip_assets.index.reader import read_chip, read_chip_by_id
from stacchip_assets.io.stac_source import StaticCatalogSource
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import shared_sample

ITEMS = [
    ("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A"),
    ("landsat-c2-l2", "LC09_L2SP_107030_20230712_02_T1"),
    ("naip", "me_m_4406901_ne_19_060_20211006"),
]


@pytest.fixture()
def indexed(tmp_path, tmp_path_factory):
    """A storage base with the per-item indexes of three sample items."""
    source = StaticCatalogSource(shared_sample(tmp_path_factory))
    storage = Storage(tmp_path / "base")
    results = {(c, i): index_item(source.get_item(c, i), storage) for c, i in ITEMS}
    return source, storage, results


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*.parquet")}


def test_combined_is_every_item_index(indexed):
    _, storage, results = indexed
    combined = CombinedIndex(storage)
    report = combined.update(results)
    assert sorted(report.upserted) == sorted(results) and report.rows_added == sum(r.chips_kept for r in results.values())
    table = combined.read()
    expected = {cid for r in results.values() for cid in r.table.column("chipid").to_pylist()}
    assert table.num_rows == len(expected) == combined.num_rows()
    assert set(table.column("chipid").to_pylist()) == expected
    # readable as it is by geopandas and pyarrow.dataset (a plain folder, no hive partitions)
    frame = gpd.read_parquet(combined.uri)
    assert len(frame) == table.num_rows and frame.crs.to_string() == "OGC:CRS84"
    assert pads.dataset(combined.uri, format="parquet").count_rows() == table.num_rows
    assert read_combined(storage).num_rows == table.num_rows
    assert sorted(Path(combined.uri).rglob("*.parquet")) == sorted(
        Path(storage.path(combined_key(c, i))) for c, i in results
    )


def test_replacing_an_item_touches_only_its_file(indexed):
    source, storage, results = indexed
    combined = CombinedIndex(storage)
    combined.update(results)
    before = snapshot(Path(combined.uri))
    target = ("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A")
    again = index_item(source.get_item(*target), storage, ChipSettings(chip_size=128))
    report = combined.update([target])
    assert report.upserted == [target]
    assert report.rows_removed == results[target].chips_kept and report.rows_added == again.chips_kept
    after = snapshot(Path(combined.uri))
    assert {k for k in after if before[k] != after[k]} == {f"{target[0]}/{target[1]}.parquet"}
    rows = combined.read().to_pandas()
    mine = rows[rows.item_id == target[1]]
    assert len(mine) == again.chips_kept and set(mine.chip_size) == {128}
    assert len(rows) == sum(r.chips_kept for k, r in results.items() if k != target) + again.chips_kept


def test_an_update_reads_no_other_item(indexed):
    """Corrupt every other combined file: an update that read them would fail."""
    source, storage, results = indexed
    combined = CombinedIndex(storage)
    combined.update(results)
    target = ("naip", "me_m_4406901_ne_19_060_20211006")
    others = [Path(storage.path(combined_key(c, i))) for c, i in results if (c, i) != target]
    for p in others:
        p.write_bytes(b"garbage")
    index_item(source.get_item(*target), storage, ChipSettings(chip_size=300))
    report = combined.update([target])
    assert report.upserted == [target] and report.rows_added == 6
    assert all(p.read_bytes() == b"garbage" for p in others)


def test_sync_finds_changes_by_listing(indexed):
    source, storage, results = indexed
    combined = CombinedIndex(storage)
    assert combined.plan_sync() == (sorted(results), [])
    combined.sync()
    assert combined.plan_sync() == ([], [])
    target = ("naip", "me_m_4406901_ne_19_060_20211006")
    index_item(source.get_item(*target), storage, ChipSettings(chip_size=200))
    assert combined.plan_sync() == ([target], [])
    Path(storage.path(Storage.index_key("landsat-c2-l2", "LC09_L2SP_107030_20230712_02_T1"))).unlink()
    report = combined.sync()
    assert report.upserted == [target] and report.removed == [("landsat-c2-l2", "LC09_L2SP_107030_20230712_02_T1")]
    assert combined.plan_sync() == ([], [])
    assert {i for _, i in combined.items()} == {"S2B_31UDQ_20230704_0_L2A", target[1]}


def test_empty_combined_index(tmp_path):
    combined = CombinedIndex(Storage(tmp_path))
    table = combined.read()
    assert table.num_rows == 0 and "geometry" in table.column_names
    assert combined.num_rows() == 0 and combined.plan_sync() == ([], [])


def test_collection_folders_are_not_hive_segments(tmp_path):
    assert combined_key("a=b", "x") == "combined/a%3Db/x.parquet"
    with pytest.raises(InvalidIdentifierError):
        combined_key("a/b", "x")


def test_chips_read_back_from_combined_rows(indexed):
    _, storage, results = indexed
    combined = CombinedIndex(storage)
    combined.update(results)
    frame = gpd.read_parquet(combined.uri)
    row = frame[frame.collection == "landsat-c2-l2"].iloc[0]
    pixels = read_chip(row)
    assert set(pixels) == {"red", "green", "blue", "nir08", "swir16", "swir22", "qa_pixel"}
    by_id = read_chip_by_id(row.chipid, storage)
    assert all(np.array_equal(pixels[k], by_id[k]) for k in pixels)
    assert pixels["red"].shape == (1, 256, 256)


def _totals(report, rows: int, items: int) -> tuple[int, int]:
    """A caller's totals moved by an update's report (what the Dagster asset records)."""
    for item, now in report.rows_by_item.items():
        rows += now - report.previous_rows_by_item.get(item, 0)
        items += int(item in report.upserted) - int(item in report.existed_before)
    return rows, items


def test_totals_stay_exact_after_an_update_that_copied_but_was_never_recorded(indexed, tmp_path_factory):
    source, storage, results = indexed
    combined = CombinedIndex(storage)
    first, second, third = ITEMS
    rows, items = _totals(combined.update([first], journal="run-1", committed=None), 0, 0)
    assert (rows, items) == (results[first].chips_kept, 1)

    # the first item is re-indexed with other settings (another row count); an update copies it and
    # the second item, then dies before its caller records anything
    bigger = index_item(source.get_item(*first), storage, ChipSettings(chip_size=128))
    assert bigger.chips_kept != results[first].chips_kept
    combined.update([first, second], journal="run-2-killed", committed="run-1")
    assert combined.journal_id() == "run-2-killed"

    # the re-run finds the files already copied, yet counts from what was recorded
    report = combined.update([first, second, third], journal="run-3", committed="run-1")
    assert report.previous_rows_by_item[first] == results[first].chips_kept and second not in report.existed_before
    rows, items = _totals(report, rows, items)
    assert (rows, items) == (combined.num_rows(), 3) == (
        bigger.chips_kept + results[second].chips_kept + results[third].chips_kept, 3)

    # once run-3 is recorded its journal is history: the next update counts from the files again
    report = combined.update([second], journal="run-4", committed="run-3")
    assert report.previous_rows_by_item[second] == results[second].chips_kept and second in report.existed_before
    assert _totals(report, rows, items) == (rows, items)
