"""The chip query as a Dagster job: `chip_query_job`, one op configured by run config.

Wiring only: `stacchip_assets.index.query` plans and runs the query (compacted runs or per-item files,
whichever the base has), this op writes the result as one GeoParquet file under the storage base,
``{base}/queries/{name}.parquet`` (atomic: temporary file + rename, one PUT on S3), and reports
what was read. The result is also recorded as the asset ``chip_queries/{name}``, whose column
lineage (``dagster/column_lineage``) points at the combined index's columns:

```yaml
ops:
  chip_query:
    config:
      name: alps-june-clear
      collections: [sentinel-2-l2a]
      start_date: "2023-06-01"
      end_date: "2023-06-30"
      bbox: [5.0, 45.0, 11.0, 48.0]
      max_cloud: 0.2
```
"""


from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetKey, AssetMaterialization, Config, Failure, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from stacchip_assets.core.ids import validate_id
from stacchip_assets.dagster_defs.assets import COMBINED_INDEX_KEY
from stacchip_assets.dagster_defs.pictures import column_lineage
from stacchip_assets.dagster_defs.resources import StorageResource
from stacchip_assets.errors import StacchipError, StorageError
from stacchip_assets.index.query import execute, plan_query, plan_row_groups

QUERIES_DIR = "queries"
PREVIEW_ROWS = 10
PREVIEW_COLUMNS = ["chipid", "collection", "date", "cloud_cover_percentage", "nodata_percentage"]


def query_asset_key(name: str) -> AssetKey:
    """The asset a named query result is recorded as (``chip_queries/{name}``), with its column lineage."""
    return AssetKey(["chip_queries", validate_id(name, "query name")])


def query_key(name: str) -> str:
    """Where a named query result is stored: ``queries/{name}.parquet``."""
    return f"{QUERIES_DIR}/{validate_id(name, 'query name')}.parquet"


class ChipQueryConfig(Config):
    name: str = Field(description="output name: the result goes to {base}/queries/{name}.parquet")
    collections: list[str] | None = Field(default=None, description="collection ids (default: all)")
    start_date: str | None = Field(default=None, description="first date, inclusive (YYYY-MM-DD)")
    end_date: str | None = Field(default=None, description="last date, inclusive (YYYY-MM-DD)")
    bbox: list[float] | None = Field(default=None, description="[xmin, ymin, xmax, ymax] in lon/lat; xmin > xmax crosses the antimeridian")
    max_cloud: float | None = Field(default=None, description="cloud_cover_percentage <= this (a fraction in [0, 1])")
    max_nodata: float | None = Field(default=None, description="nodata_percentage <= this (a fraction in [0, 1])")
    layout: Literal["auto", "compacted", "per-item"] = Field(
        default="auto", description="read the compacted runs when the base has them (auto), or force one layout")


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=64 * 1024)
    return sink.getvalue().to_pybytes()


def _preview(table: pa.Table) -> str:
    head = table.slice(0, PREVIEW_ROWS).select(PREVIEW_COLUMNS).to_pylist()
    bbox = table.column("bbox").slice(0, PREVIEW_ROWS).to_pylist() if table.num_rows else []
    lines = ["| " + " | ".join([*PREVIEW_COLUMNS, "bbox"]) + " |", "|" + "---|" * (len(PREVIEW_COLUMNS) + 1)]
    for row, box in zip(head, bbox):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        cells.append(", ".join(f"{box[k]:.4f}" for k in ("xmin", "ymin", "xmax", "ymax")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@op(
    description="Query the combined index by collection, date range, bbox and cloud/nodata; write the chips "
    "as GeoParquet to {base}/queries/{name}.parquet.",
    tags={"kind": "geoparquet"},
)
def chip_query(context: OpExecutionContext, config: ChipQueryConfig, storage: StorageResource) -> Output[str]:
    store = storage.storage()
    filters: dict[str, Any] = {
        "collections": config.collections,
        "date_range": None if config.start_date is None and config.end_date is None else (config.start_date, config.end_date),
        "bbox": config.bbox, "max_cloud": config.max_cloud, "max_nodata": config.max_nodata,
    }
    try:
        key = query_key(config.name)
        plan = plan_query(store, layout=config.layout, **filters)
        read = plan_row_groups(plan)
        table = execute(plan)
        data = _encode(table)
        uri = store.write_bytes(key, data)
    except (StacchipError, ValueError, TypeError) as exc:
        kind = type(exc).__name__
        raise Failure(description=f"chip query {config.name!r}: {kind}: {exc}", metadata={"error": str(exc)},
                      allow_retries=isinstance(exc, StorageError)) from exc
    items = len(set(table.column("item_id").to_pylist())) if table.num_rows else 0
    context.log.info("chip query %r: %d chips of %d items (%s layout, %d of %d row groups read) -> %s",
                     config.name, table.num_rows, items, plan.layout, read["row_groups_read"], read["row_groups_total"], uri)
    summary = (
        f"**{table.num_rows}** chips of **{items}** items; {plan.layout} layout, {read['files_opened']} files opened, "
        f"{read['row_groups_read']} of {read['row_groups_total']} row groups read "
        f"({read['row_group_bytes_read']} of {read['row_group_bytes_total']} bytes).\n\n"
        f"Read it with `geopandas.read_parquet({uri!r})`.\n\n" + _preview(table)
    )
    # the result as an asset of its own: its columns come from the combined index's (column lineage)
    context.log_event(AssetMaterialization(
        asset_key=query_asset_key(config.name), description=f"chip query {config.name!r} of the combined index",
        metadata={"dagster/row_count": MetadataValue.int(table.num_rows), "path": MetadataValue.path(uri),
                  "dagster/column_lineage": column_lineage(table.column_names, COMBINED_INDEX_KEY)},
    ))
    return Output(
        uri,
        metadata={
            "dagster/row_count": MetadataValue.int(table.num_rows),
            "path": MetadataValue.path(uri),
            "items": MetadataValue.int(items),
            "bytes_written": MetadataValue.int(len(data)),
            "filters": MetadataValue.json({k: (list(v) if isinstance(v, tuple) else v) for k, v in filters.items()}),
            "layout": MetadataValue.text(plan.layout),
            "runs_selected": MetadataValue.int(plan.runs_selected),
            "runs_total": MetadataValue.int(plan.runs_total),
            "pending_files": MetadataValue.int(plan.pending_files),
            **{k: MetadataValue.int(v) for k, v in read.items()},
            "preview": MetadataValue.md(summary),
        },
    )


@job(description="Query the combined index (run config: name, collections, start_date, end_date, bbox, max_cloud, "
     "max_nodata) and write the chips as GeoParquet under the storage base.")
def chip_query_job():
    chip_query()


__all__ = ["ChipQueryConfig", "chip_query", "chip_query_job", "query_asset_key", "query_key"]
