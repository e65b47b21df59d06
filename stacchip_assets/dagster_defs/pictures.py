"""Pictures and lineage in the materialization metadata (wiring only: drawing is in `index.pictures`,
`index.gallery`, `index.coverage`; provenance in `index.provenance`).

Images appear as Markdown metadata. The Dagster UI renders Markdown inline only when it is shorter
than 1000 characters (`stacchip_assets.index.pictures`), so with `StorageResource.image_url_prefix`
(an http(s) URL under which the storage base is served) the Markdown links the stored PNG and the
picture shows right in the metadata table; without it the PNG is inlined as a data: URI and opens with
one click on "[Show Markdown]".

Column lineage (``dagster/column_lineage``): every column of ``combined_index`` comes from the column
of the same name of ``chip_index`` (a byte copy of the per-item files); the chip query outputs and
the training manifest take their columns from ``combined_index``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pystac
from dagster import AssetKey, MetadataValue, TableColumn, TableColumnDep, TableColumnLineage, TableRecord, TableSchema

from stacchip_assets.index.combined import read_combined
from stacchip_assets.index.coverage import render_coverage
from stacchip_assets.index.item_index import ItemIndexResult
from stacchip_assets.index.pictures import distributions_markdown, image_markdown, rounded
from stacchip_assets.io.geoparquet import INDEX_SCHEMA
from stacchip_assets.io.stac_source import item_updated
from stacchip_assets.io.storage import COMBINED_DIR, Storage

INDEX_COLUMNS = [f.name for f in INDEX_SCHEMA]
#: The coverage map reads these columns of every combined row; above this many rows it is not drawn
#: (the update would cost a read of the whole index, not O(changes)).
COVERAGE_MAX_ROWS = 500_000
COVERAGE_KEY = f"{COMBINED_DIR}/_coverage.png"  # "_": hidden from the readers of the combined folder
PROVENANCE_ROWS = 50
CHIP_INDEX = AssetKey("chip_index")


def image_url(prefix: str | None, key: str) -> str | None:
    """The URL of a stored file under `prefix` (None without a prefix)."""
    return f"{prefix.rstrip('/')}/{key}" if prefix else None


def column_lineage(columns: Iterable[str], upstream: AssetKey,
                   upstream_columns: Sequence[str] = tuple(INDEX_COLUMNS)) -> TableColumnLineage:
    """Each column of `columns` that `upstream` also has comes from that column of `upstream`."""
    known = set(upstream_columns)
    return TableColumnLineage(deps_by_column={
        c: [TableColumnDep(asset_key=upstream, column_name=c)] for c in columns if c in known
    })


def chip_index_pictures(result: ItemIndexResult, image_url_prefix: str | None = None) -> dict[str, Any]:
    """The picture entries of a chip_index materialization: quicklook, gallery, rounded distributions."""
    cloud = result.distribution("cloud_cover_percentage")
    nodata = result.distribution("nodata_percentage")
    quicklook_key = Storage.quicklook_key(result.collection, result.item_id)
    meta: dict[str, Any] = {
        "quicklook": MetadataValue.md(image_markdown("quicklook", result.quicklook_png, image_url(image_url_prefix, quicklook_key))),
    }
    if result.gallery is not None:
        key = Storage.gallery_key(result.collection, result.item_id)
        meta["gallery"] = MetadataValue.md(image_markdown("gallery", result.gallery.png, image_url(image_url_prefix, key)))
        meta["gallery_chips"] = MetadataValue.text(result.gallery.description)
        meta["gallery_path"] = MetadataValue.path(result.gallery_uri or "")
    else:
        meta["gallery_chips"] = MetadataValue.text(result.gallery_error or "no chips: no gallery")
    meta.update({
        "distributions": MetadataValue.md(distributions_markdown({"cloud": cloud, "nodata": nodata})),
        "cloud_cover_distribution": MetadataValue.json({k: rounded(v, 4) for k, v in cloud.items()}),
        "nodata_distribution": MetadataValue.json({k: rounded(v, 4) for k, v in nodata.items()}),
    })
    return meta


def coverage_metadata(store: Storage, rows: int, image_url_prefix: str | None = None) -> dict[str, Any]:
    """The coverage map of the combined index (stored as combined/_coverage.png) as metadata entries."""
    if rows > COVERAGE_MAX_ROWS:
        return {"coverage_map": MetadataValue.md(f"not drawn: {rows} chips is more than COVERAGE_MAX_ROWS = {COVERAGE_MAX_ROWS}")}
    table = read_combined(store, columns=["collection", "item_id", "cloud_cover_percentage", "geometry"])
    coverage = render_coverage(table)
    if coverage is None:
        store.delete(COVERAGE_KEY)
        return {"coverage_map": MetadataValue.md("no chips: no map")}
    uri = store.write_bytes(COVERAGE_KEY, coverage.png)
    drawn = ", ".join(f"{p.collection} {p.drawn}/{p.chips}" for p in coverage.panels)
    return {
        "coverage_map": MetadataValue.md(image_markdown("coverage", coverage.png, image_url(image_url_prefix, COVERAGE_KEY))),
        "coverage_map_path": MetadataValue.path(uri),
        "coverage_footprints": MetadataValue.text(f"footprints drawn per collection: {drawn}"),
    }


PROVENANCE_SCHEMA = TableSchema(columns=[
    TableColumn("partition", "string", description="chip_index partition (collection/item_id)"),
    TableColumn("data_version", "string", description="data version of the chip_index materialization copied"),
    TableColumn("rows", "int"),
    TableColumn("stac_item_updated", "string", description="the STAC item's updated time as indexed"),
    TableColumn("stac_item_href", "string", description="the item at its source"),
])


def provenance_table(store: Storage, changes: Sequence[tuple[str, str]], versions: dict[str, str],
                     rows_by_item: dict[tuple[str, str], int]) -> MetadataValue:
    """One row per item this update copied (at most PROVENANCE_ROWS): partition, data version, STAC item version."""
    records = []
    for collection, item_id in list(changes)[:PROVENANCE_ROWS]:
        key = store.item_key(collection, item_id)
        updated, href = "", ""
        if store.exists(key):
            data = json.loads(store.read_bytes(key))
            updated = item_updated(pystac.Item.from_dict(data, preserve_dict=True))
            href = next((lk.get("href", "") for lk in data.get("links", []) if lk.get("rel") == "via"), "")
        records.append(TableRecord({
            "partition": f"{collection}/{item_id}", "data_version": versions.get(f"{collection}/{item_id}", ""),
            "rows": int(rows_by_item.get((collection, item_id), 0)), "stac_item_updated": updated, "stac_item_href": href,
        }))
    return MetadataValue.table(records, schema=PROVENANCE_SCHEMA)


#: Entries redrawn only when an update changed something (else carried over from the previous materialization).
CARRIED = ("coverage_map", "coverage_map_path", "coverage_footprints", "provenance")


def combined_pictures(store: Storage, rows: int, changes: Sequence[tuple[str, str]], versions: dict[str, str],
                      rows_by_item: dict[tuple[str, str], int], previous: dict[str, Any],
                      image_url_prefix: str | None = None) -> dict[str, Any]:
    """combined_index's picture and lineage entries: column lineage from chip_index, the coverage map and
    the provenance table of the items this update copied. An update that changed nothing carries the
    previous map and table over (no read of the whole index for nothing)."""
    meta: dict[str, Any] = {
        "dagster/column_lineage": column_lineage(INDEX_COLUMNS, CHIP_INDEX),
        "chip_provenance": MetadataValue.md(PROVENANCE_HOWTO),
    }
    if not changes and all(k in previous for k in ("coverage_map", "provenance")):
        meta.update({k: previous[k] for k in CARRIED if k in previous})
        return meta
    meta.update(coverage_metadata(store, rows, image_url_prefix))
    meta["provenance"] = provenance_table(store, changes, versions, rows_by_item)
    return meta


PROVENANCE_HOWTO = (
    "Any chip id: `stacchip_assets.index.provenance.chip_provenance(chipid, base)` gives its chip_index "
    "partition (`collection/item_id`), the data version of the index it was read from (= the "
    "`dagster/data_version` of that partition's materialization: Assets > chip_index > Partitions > the key "
    "> Events) and the STAC item's id, `updated` and source href. The `provenance` table lists the items of "
    "the latest update that copied any."
)
