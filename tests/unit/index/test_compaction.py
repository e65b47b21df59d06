"""The compacted tier of the combined index: sorted runs per (collection, year), a manifest, tombstones."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely

from stacchip_assets import compaction
from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.compaction import (
    MANIFEST_KEY,
    CompactionSettings,
    compact,
    hilbert_index,
    load_manifest,
    refresh,
    spatial_key,
)
from stacchip_assets.index.query import query_chips
from stacchip_assets.io.geoparquet import build_index_table
from stacchip_assets.io.storage import Storage

#: tiny runs so that a few hundred chips exercise row groups, tiers, merges and seals
SMALL = CompactionSettings(row_group_rows=32, base_rows=64, fanout=3, seal_rows=400, read_batch_rows=300, grace_seconds=0)
EPOCH = dt.date(1970, 1, 1)


def item_table(collection: str, item_id: str, date: dt.date, lon: float, lat: float, nx: int, ny: int,
               seed: int, chip_deg: float = 0.05) -> pa.Table:
    """A synthetic per-item chip index: an nx x ny grid of chips starting at (lon, lat)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny))
    xs, ys = xs.ravel(), ys.ravel()
    x0 = lon + xs * chip_deg
    y1 = lat - ys * chip_deg
    polygons = shapely.box(x0, y1 - chip_deg, x0 + chip_deg, y1)
    n = len(xs)
    days = (date - EPOCH).days
    columns = {
        "chipid": [f"{item_id}-{x}-{y}" for x, y in zip(xs, ys)],
        "date": np.full(n, days, dtype=np.int32),
        "chip_index_x": xs.astype(np.uint16),
        "chip_index_y": ys.astype(np.uint16),
        "cloud_cover_percentage": np.round(rng.random(n), 2).astype(np.float32),
        "nodata_percentage": (rng.random(n) * 0.5 * (rng.random(n) < 0.3)).astype(np.float32),
        "collection": [collection] * n,
        "item_id": [item_id] * n,
        "datetime": np.full(n, days * 86_400_000_000 + 36_000_000_000, dtype=np.int64),
        "item_href": [f"/catalog/{collection}/{item_id}/stac_item.json"] * n,
        "chip_size": np.full(n, 256, dtype=np.uint16),
        "chip_stride": np.full(n, 256, dtype=np.uint16),
    }
    return build_index_table(columns, polygons)


def random_items(count: int, seed: int = 0, collections=("s2", "landsat"), years=(2020, 2021, 2022)):
    """(collection, item_id) -> table, spread over a few regions, years and sizes."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(count):
        collection = collections[k % len(collections)]
        date = dt.date(int(rng.choice(years)), int(rng.integers(1, 13)), int(rng.integers(1, 28)))
        lon, lat = float(rng.uniform(-170, 160)), float(rng.uniform(-60, 70))
        item_id = f"{collection.upper()}_{k:03d}_{date:%Y%m%d}"
        out[(collection, item_id)] = item_table(collection, item_id, date, lon, lat, int(rng.integers(3, 9)), int(rng.integers(3, 8)), seed * 1000 + k)
    return out


def add_items(storage: Storage, items: dict) -> None:
    """The real write path: per-item index, then CombinedIndex.update."""
    for (collection, item_id), table in items.items():
        storage.write_index(table, collection, item_id)
    CombinedIndex(storage).update(list(items))


def canonical(table: pa.Table) -> pa.Table:
    table = table.replace_schema_metadata(None)
    return table.sort_by([("collection", "ascending"), ("chipid", "ascending")])


def logical(storage: Storage) -> pa.Table:
    """What the combined index holds: the per-item layout."""
    return canonical(CombinedIndex(storage).read())


def runs_content(storage: Storage) -> pa.Table:
    manifest = load_manifest(storage)
    tables = [pq.read_table(storage.path(r.key)).replace_schema_metadata(None) for r in manifest.runs]
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    base = tmp_path_factory.mktemp("lsm") / "base"
    storage = Storage(base)
    items = random_items(30)
    add_items(storage, items)
    return base, items


@pytest.fixture()
def base(seeded, tmp_path):
    src, items = seeded
    dst = tmp_path / "base"
    shutil.copytree(src, dst)
    return Storage(dst), items


def test_hilbert_index_is_a_curve():
    xs, ys = np.meshgrid(np.arange(8), np.arange(8))
    d = hilbert_index(xs.ravel(), ys.ravel(), order=3)
    assert sorted(d.tolist()) == list(range(64))
    order = np.argsort(d)
    steps = np.abs(np.diff(xs.ravel()[order])) + np.abs(np.diff(ys.ravel()[order]))
    assert set(steps.tolist()) == {1}  # consecutive cells are neighbours


def test_first_compaction_keeps_every_chip_exactly_once(base):
    storage, items = base
    before = logical(storage)
    report = compact(storage, settings=SMALL)
    manifest = load_manifest(storage)
    assert manifest.pending == {} and manifest.tombstones == {} and manifest.generation == 1
    assert report.items_compacted == len(items) and report.delta_rows == before.num_rows
    content = runs_content(storage)
    assert content.num_rows == before.num_rows == sum(r.rows for r in manifest.runs)
    assert canonical(content).equals(before)
    for run in manifest.runs:
        table = pq.read_table(storage.path(run.key))
        meta = pq.ParquetFile(storage.path(run.key)).metadata
        assert set(table.column("collection").to_pylist()) == {run.collection}
        assert {d.year for d in table.column("date").to_pylist()} == {run.year}
        assert all(meta.row_group(i).num_rows <= SMALL.row_group_rows for i in range(meta.num_row_groups))
        key = spatial_key(table)
        assert np.all(np.diff(key.astype(np.float64)) >= 0)  # sorted along the curve
        assert json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]["covering"]
        assert json.loads(Path(storage.path(run.items_key)).read_text())["items"] == dict(
            zip(*np.unique(table.column("item_id").to_numpy(zero_copy_only=False), return_counts=True))
        ) | {}
        assert run.rows < SMALL.seal_rows * SMALL.fanout
    # the plain-folder view of the per-item layout does not see the runs
    assert len(gpd.read_parquet(CombinedIndex(storage).uri)) == before.num_rows
    assert CombinedIndex(storage).items() == set(items) and CombinedIndex(storage).plan_sync() == ([], [])
    assert canonical(query_chips(storage)).equals(before)


def test_new_items_are_registered_and_only_their_partitions_are_rewritten(base):
    storage, items = base
    compact(storage, settings=SMALL)
    runs_before = {r.key: (r.collection, r.year) for r in load_manifest(storage).runs}
    new = {
        ("s2", f"S2_NEW_{k}"): item_table("s2", f"S2_NEW_{k}", dt.date(2021, 5, 1 + k), 10.0 + k, 45.0, 4, 4, 900 + k)
        for k in range(2)
    }
    add_items(storage, new)
    manifest = load_manifest(storage)
    assert manifest.pending == {"s2": {i: {"seq": manifest.pending["s2"][i]["seq"], "replaced": False} for _, i in new}}
    assert canonical(query_chips(storage)).equals(logical(storage))  # read from their per-item files
    report = compact(storage, settings=SMALL)
    assert report.items_compacted == 2 and report.tombstones_added == 0 and report.delta_rows == 32
    after = load_manifest(storage)
    assert after.pending == {} and after.tombstones == {}
    assert report.partitions == [("s2", 2021)]
    changed = {k for k in runs_before if k not in {r.key for r in after.runs}}
    assert {runs_before[k] for k in changed} <= {("s2", 2021)}
    assert {(r.collection, r.year) for r in after.runs if r.key not in runs_before} == {("s2", 2021)}
    assert canonical(runs_content(storage)).equals(logical(storage))


def test_replace_and_remove_hide_the_old_rows_until_and_after_compaction(base):
    storage, items = base
    compact(storage, settings=SMALL)
    combined = CombinedIndex(storage)
    (c1, replaced), (c2, removed) = sorted(items)[0], sorted(items)[5]
    storage.write_index(item_table(c1, replaced, dt.date(2020, 2, 2), 3.0, 3.0, 2, 2, 77), c1, replaced)
    combined.update([(c1, replaced)])
    combined.remove(c2, removed)
    manifest = load_manifest(storage)
    assert manifest.pending[c1][replaced]["replaced"] is True and manifest.pending[c2][removed]["replaced"] is True
    expected = logical(storage)
    assert expected.num_rows == sum(t.num_rows for k, t in items.items() if k not in ((c1, replaced), (c2, removed))) + 4
    assert canonical(query_chips(storage)).equals(expected)
    report = compact(storage, settings=SMALL)
    assert report.tombstones_added == 2
    assert canonical(query_chips(storage)).equals(expected)
    # a full compaction applies every tombstone: no dead rows left anywhere, no tombstone left
    compact(storage, settings=SMALL, full=True)
    manifest = load_manifest(storage)
    assert manifest.tombstones == {} and manifest.pending == {}
    assert canonical(runs_content(storage)).equals(expected)
    assert canonical(query_chips(storage)).equals(expected)
    assert all(r.rows <= SMALL.seal_rows for r in manifest.runs)


def test_many_small_compactions_merge_by_tier(base):
    storage, _ = base
    compact(storage, settings=SMALL)
    for k in range(14):
        item_id = f"S2_TICK_{k:02d}"
        add_items(storage, {("s2", item_id): item_table("s2", item_id, dt.date(2022, 3, 1 + k), -40.0 + k, 10.0, 5, 5, 500 + k)})
        report = compact(storage, settings=SMALL)
        assert report.delta_rows == 25
        runs = load_manifest(storage).runs_in("s2", 2022)
        tiers: dict[int, int] = {}
        for r in runs:
            if r.rows < SMALL.seal_rows:
                tiers[compaction._tier(r.rows, SMALL)] = tiers.get(compaction._tier(r.rows, SMALL), 0) + 1
        assert all(n < SMALL.fanout for n in tiers.values())
    assert canonical(runs_content(storage)).equals(logical(storage))
    assert canonical(query_chips(storage)).equals(logical(storage))


def test_manifest_writes_are_atomic(base, monkeypatch):
    storage, items = base
    compact(storage, settings=SMALL)
    path = Path(storage.path(MANIFEST_KEY))
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        with pytest.raises(StorageError):
            compaction.register_items(storage, upserted=[sorted(items)[0]])
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # a compaction that fails half way leaves the manifest as it was; the next one cleans up after it
    add_items(storage, {("s2", "S2_LATE"): item_table("s2", "S2_LATE", dt.date(2020, 8, 8), 1.0, 1.0, 4, 4, 5)})
    before = path.read_bytes()
    calls = {"n": 0}
    real = compaction.write_run

    def fail_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StorageError("boom")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(compaction, "write_run", fail_second)
        with pytest.raises(StorageError):
            compact(storage, settings=SMALL, full=True)
    assert path.read_bytes() == before
    assert canonical(query_chips(storage)).equals(logical(storage))
    report = compact(storage, settings=SMALL)
    assert report.files_deleted >= 1  # the run the failed compaction left behind
    listed = {r.key for r in load_manifest(storage).runs}
    on_disk = {str(p.relative_to(storage.root)) for p in Path(storage.path(compaction.RUNS_DIR)).rglob("*.parquet")}
    assert on_disk == listed
    assert canonical(query_chips(storage)).equals(logical(storage))


def test_an_update_during_compaction_stays_pending(base, monkeypatch):
    storage, items = base
    compact(storage, settings=SMALL)
    target = sorted(items)[2]
    storage.write_index(item_table(target[0], target[1], dt.date(2022, 1, 1), 0.0, 0.0, 3, 3, 1), *target)
    CombinedIndex(storage).update([target])
    real = compaction.write_run
    newer = item_table(target[0], target[1], dt.date(2022, 1, 1), 50.0, 0.0, 2, 3, 2)

    def racing(*args, **kwargs):  # the item is updated again after the compaction read it
        if not racing.done:
            racing.done = True
            storage.write_index(newer, *target)
            CombinedIndex(storage).update([target])
        return real(*args, **kwargs)

    racing.done = False
    monkeypatch.setattr(compaction, "write_run", racing)
    compact(storage, settings=SMALL)
    assert target[1] in load_manifest(storage).pending[target[0]]
    got = query_chips(storage, collections=[target[0]]).filter(pc.equal(pc.field("item_id"), target[1]))
    assert got.num_rows == 6
    monkeypatch.setattr(compaction, "write_run", real)
    compact(storage, settings=SMALL)
    assert load_manifest(storage).pending == {}
    assert canonical(query_chips(storage)).equals(logical(storage))


def test_refresh_finds_files_changed_behind_the_manifest(base):
    storage, items = base
    compact(storage, settings=SMALL)
    target, gone = sorted(items)[1], sorted(items)[3]
    # written without CombinedIndex: the manifest does not know
    storage.write_index(item_table(target[0], target[1], dt.date(2021, 1, 1), 0.0, 0.0, 2, 2, 3), *target)
    storage.copy(Storage.index_key(*target), combined_key(*target))
    Path(storage.path(combined_key(*gone))).unlink()
    assert not canonical(query_chips(storage)).equals(logical(storage))
    assert set(refresh(storage)) == {target, gone}
    assert canonical(query_chips(storage)).equals(logical(storage))
    compact(storage, settings=SMALL)
    assert canonical(query_chips(storage)).equals(logical(storage))
    assert refresh(storage) == []


def test_no_manifest_means_no_change_to_the_per_item_layout(base):
    storage, items = base
    CombinedIndex(storage).update(list(items)[:2])
    assert not Path(storage.path(compaction.LSM_DIR)).exists()
    assert compaction.status(storage) == {"enabled": False}


def test_on_s3(s3_server, request):
    """The same on an S3 base (SeaweedFS): runs, manifest and per-item files are objects."""
    import uuid

    bucket = f"lsm-{uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    storage = Storage.from_uri(f"s3://{bucket}/base", endpoint_url=s3_server.endpoint, region=s3_server.region,
                               access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    items = random_items(8, seed=5)
    add_items(storage, items)
    compact(storage, settings=SMALL)
    (c1, replaced), (c2, removed) = sorted(items)[0], sorted(items)[1]
    add_items(storage, {(c1, replaced): item_table(c1, replaced, dt.date(2021, 3, 3), 5.0, 5.0, 2, 3, 8)})
    CombinedIndex(storage).remove(c2, removed)
    assert canonical(query_chips(storage)).equals(logical(storage))
    compact(storage, settings=SMALL)
    manifest = load_manifest(storage)
    assert manifest.pending == {} and manifest.runs
    assert canonical(query_chips(storage)).equals(logical(storage))
    box = (-60.0, -30.0, 60.0, 40.0)
    assert canonical(query_chips(storage, bbox=box, max_cloud=0.5)).equals(
        canonical(CombinedIndex(storage).read()).filter(
            (pc.field("bbox", "xmax") >= box[0]) & (pc.field("bbox", "xmin") <= box[2])
            & (pc.field("bbox", "ymax") >= box[1]) & (pc.field("bbox", "ymin") <= box[3])
            & (pc.field("cloud_cover_percentage") <= pa.scalar(0.5, pa.float32()))
        )
    )


def test_sync_registers_its_changes(base):
    storage, items = base
    compact(storage, settings=SMALL)
    changed, gone = sorted(items)[4], sorted(items)[6]
    storage.write_index(item_table(changed[0], changed[1], dt.date(2020, 4, 4), 20.0, 20.0, 3, 3, 4), *changed)
    Path(storage.path(Storage.index_key(*gone))).unlink()
    report = CombinedIndex(storage).sync()
    assert report.upserted == [changed] and report.removed == [gone]
    assert load_manifest(storage).pending_items() == {changed, gone}
    assert canonical(query_chips(storage)).equals(logical(storage))
    compact(storage, settings=SMALL)
    assert canonical(query_chips(storage)).equals(logical(storage))
