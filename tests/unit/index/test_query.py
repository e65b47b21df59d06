"""query_chips / query_chips_gdf: the same rows as filtering the whole combined index in memory."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import shapely

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.index.compaction import compact
from stacchip_assets.index.query import (
    chip_filter,
    execute,
    plan_query,
    plan_row_groups,
    query_boxes,
    query_chips,
    query_chips_gdf,
)
from stacchip_assets.io.geoparquet import INDEX_SCHEMA
from stacchip_assets.io.storage import Storage

from tests.unit.index.test_compaction import SMALL, add_items, canonical, item_table, random_items

EPOCH = dt.date(1970, 1, 1)


def reference(table: pa.Table, collections=None, date_range=None, bbox=None, max_cloud=None, max_nodata=None) -> pa.Table:
    """The documented semantics, in numpy, on the whole table."""
    keep = np.ones(table.num_rows, dtype=bool)
    if collections is not None:
        keep &= np.isin(table.column("collection").to_numpy(zero_copy_only=False), list(collections))
    if date_range is not None:
        days = table.column("date").cast(pa.int32()).to_numpy()
        if date_range[0] is not None:
            keep &= days >= (dt.date.fromisoformat(str(date_range[0])[:10]) - EPOCH).days
        if date_range[1] is not None:
            keep &= days <= (dt.date.fromisoformat(str(date_range[1])[:10]) - EPOCH).days
    if bbox is not None:
        b = table.column("bbox").combine_chunks()
        xmin, ymin, xmax, ymax = (b.field(n).to_numpy() for n in ("xmin", "ymin", "xmax", "ymax"))
        hit = np.zeros(table.num_rows, dtype=bool)
        for qx0, qy0, qx1, qy1 in query_boxes(bbox):
            hit |= (xmax >= qx0) & (xmin <= qx1) & (ymax >= qy0) & (ymin <= qy1)
        keep &= hit
    if max_cloud is not None:
        keep &= table.column("cloud_cover_percentage").to_numpy() <= np.float32(max_cloud)
    if max_nodata is not None:
        keep &= table.column("nodata_percentage").to_numpy() <= np.float32(max_nodata)
    return canonical(table.filter(pa.array(keep)))


def random_filters(rng: np.random.Generator) -> dict:
    out: dict = {}
    if rng.random() < 0.4:
        out["collections"] = [str(rng.choice(["s2", "landsat", "nope"]))]
    if rng.random() < 0.6:
        start = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 900)))
        end = start + dt.timedelta(days=int(rng.integers(0, 400)))
        out["date_range"] = (start.isoformat() if rng.random() < 0.5 else start, None if rng.random() < 0.2 else end)
    if rng.random() < 0.7:
        x, y = rng.uniform(-180, 170), rng.uniform(-60, 60)
        w, h = rng.uniform(0.1, 80), rng.uniform(0.1, 40)
        out["bbox"] = (x, y, x + w, y + h)
    if rng.random() < 0.5:
        out["max_cloud"] = float(rng.choice([0.0, 0.2, 0.5, 0.93]))
    if rng.random() < 0.3:
        out["max_nodata"] = float(rng.choice([0.0, 0.1, 0.3]))
    return out


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """The same logical index in three states: per-item only, fully compacted, and compacted with
    pending new/replaced/removed items and tombstones."""
    root = tmp_path_factory.mktemp("query")
    items = random_items(40, seed=3)
    plain = Storage(root / "plain")
    add_items(plain, items)
    compacted = Storage(root / "compacted")
    shutil.copytree(plain.root, compacted.root)
    compact(compacted, settings=SMALL)
    mixed = Storage(root / "mixed")
    shutil.copytree(compacted.root, mixed.root)
    keys = sorted(items)
    # replaced (compacted, then pending), removed, new: some compacted again, some left pending
    add_items(mixed, {keys[0]: item_table(keys[0][0], keys[0][1], dt.date(2021, 6, 6), 10.0, 45.0, 6, 6, 11)})
    CombinedIndex(mixed).remove(*keys[1])
    add_items(mixed, {("s2", "S2_NEW_A"): item_table("s2", "S2_NEW_A", dt.date(2021, 6, 20), 10.2, 45.3, 5, 5, 12)})
    compact(mixed, settings=SMALL)
    add_items(mixed, {keys[2]: item_table(keys[2][0], keys[2][1], dt.date(2022, 2, 2), -70.0, -10.0, 3, 3, 13)})
    CombinedIndex(mixed).remove(*keys[3])
    add_items(mixed, {("landsat", "LANDSAT_NEW_B"): item_table("landsat", "LANDSAT_NEW_B", dt.date(2020, 3, 3), 100.0, 20.0, 4, 4, 14)})
    return {"plain": plain, "compacted": compacted, "mixed": mixed}


@pytest.mark.parametrize("state", ["plain", "compacted", "mixed"])
def test_query_equals_an_in_memory_filter(states, state):
    storage = states[state]
    full = CombinedIndex(storage).read()
    assert canonical(query_chips(storage)).equals(canonical(full))
    rng = np.random.default_rng(42)
    nonempty = 0
    for _ in range(40):
        filters = random_filters(rng)
        got = canonical(query_chips(storage, **filters))
        expected = reference(full, **filters)
        assert got.equals(expected), filters
        nonempty += got.num_rows > 0
    assert nonempty >= 10


def test_mixed_state_has_pending_items_and_tombstones(states):
    from stacchip_assets.index.compaction import load_manifest

    manifest = load_manifest(states["mixed"])
    assert manifest.pending and manifest.tombstones
    plan = plan_query(states["mixed"])
    assert plan.layout == "compacted" and plan.pending_files == 3
    assert any(scan.hidden for scan in plan.scans)


def test_columns_and_geo_metadata(states):
    storage = states["mixed"]
    table = query_chips(storage, bbox=(-180, -90, 180, 90), max_cloud=0.5, columns=["chipid", "item_id"])
    assert table.column_names == ["chipid", "item_id"] and table.num_rows > 0
    assert b"geo" not in (table.schema.metadata or {})
    whole = query_chips(storage, max_cloud=0.5)
    assert whole.schema.remove_metadata().equals(INDEX_SCHEMA) and b"geo" in whole.schema.metadata
    assert sorted(table.column("chipid").to_pylist()) == sorted(whole.column("chipid").to_pylist())
    with pytest.raises(ValueError):
        query_chips(storage, columns=["nope"])


def test_geodataframe(states):
    storage = states["compacted"]
    box = (-60.0, -30.0, 60.0, 40.0)
    frame = query_chips_gdf(storage, bbox=box, max_cloud=0.6)
    table = query_chips(storage, bbox=box, max_cloud=0.6)
    assert len(frame) == table.num_rows > 0 and frame.crs.to_string() == "OGC:CRS84"
    assert frame.geometry.geom_type.unique().tolist() == ["Polygon"]
    assert sorted(frame.chipid) == sorted(table.column("chipid").to_pylist())
    exact = query_chips_gdf(storage, bbox=box, max_cloud=0.6, exact=True)
    assert len(exact) <= len(frame) and exact.intersects(shapely.box(*box)).all()
    assert len(query_chips_gdf(storage, collections=["nope"])) == 0


def test_filters_prune_row_groups(states):
    storage = states["compacted"]
    plan = plan_query(storage, bbox=(10.0, 40.0, 11.0, 41.0), date_range=("2021-01-01", "2021-12-31"))
    total = kept = 0
    for scan in plan.scans:
        for key in scan.keys:
            fragment = next(pads.dataset(storage.path(key), format="parquet").get_fragments())
            total += fragment.num_row_groups
            kept += len(fragment.split_by_row_group(filter=scan.filter, schema=INDEX_SCHEMA))
    assert plan.runs_selected < plan.runs_total
    assert kept <= max(2, total // 4)


@pytest.mark.parametrize("state", ["plain", "compacted", "mixed"])
def test_plan_row_groups_counts_what_the_query_reads(states, state):
    import pyarrow.parquet as pq

    storage = states[state]
    some = CombinedIndex(storage).read().slice(5, 1).to_pylist()[0]  # a box around one chip, in its year
    x, y = (some["bbox"]["xmin"] + some["bbox"]["xmax"]) / 2, (some["bbox"]["ymin"] + some["bbox"]["ymax"]) / 2
    year = some["date"].year
    plan = plan_query(storage, bbox=(x - 0.05, y - 0.05, x + 0.05, y + 0.05), date_range=(f"{year}-01-01", f"{year}-12-31"))
    stats = plan_row_groups(plan)
    existing = [k for k in plan.keys if Path(storage.path(k)).is_file()]
    footers = [pq.ParquetFile(storage.path(k)).metadata for k in existing]
    assert stats["files_opened"] == len(existing)
    assert stats["row_groups_total"] == sum(m.num_row_groups for m in footers)
    assert stats["row_group_bytes_total"] == sum(
        m.row_group(g).column(c).total_compressed_size for m in footers for g in range(m.num_row_groups) for c in range(m.num_columns))
    assert 0 < stats["row_groups_read"] <= stats["row_groups_total"]
    assert 0 < stats["row_group_bytes_read"] <= stats["row_group_bytes_total"]
    if state == "compacted":  # sorted runs: the box needs a small part of the row groups it opens
        assert stats["row_groups_read"] < stats["row_groups_total"]
    assert execute(plan).num_rows > 0


def test_antimeridian(tmp_path):
    storage = Storage(tmp_path / "base")
    # an item whose chips are stored past 180 (the indexer keeps crossing footprints as one polygon)
    add_items(storage, {("s2", "S2_DATELINE"): item_table("s2", "S2_DATELINE", dt.date(2021, 1, 1), 179.8, -16.0, 10, 2, 1)})
    compact(storage, settings=SMALL)
    full = CombinedIndex(storage).read()
    for box in [(-180.0, -17.0, -179.5, -15.0), (179.9, -17.0, -179.9, -15.0), (179.0, -17.0, 179.9, -15.0), (170.0, -17.0, 200.0, -15.0)]:
        got = canonical(query_chips(storage, bbox=box))
        assert got.num_rows > 0 and got.equals(reference(full, bbox=box)), box
    assert query_chips(storage, bbox=(-170.0, -17.0, -160.0, -15.0)).num_rows == 0


def test_empty_and_errors(tmp_path):
    empty = query_chips(tmp_path / "nothing")
    assert empty.num_rows == 0 and empty.schema.remove_metadata().equals(INDEX_SCHEMA)
    with pytest.raises(StorageError):
        query_chips(tmp_path / "nothing", layout="compacted")
    with pytest.raises(ValueError):
        query_chips(tmp_path / "nothing", bbox=(0, 1, 2))
    with pytest.raises(ValueError):
        query_chips(tmp_path / "nothing", date_range=("June", None))
    assert chip_filter() is None
