"""The materialization metadata of one chip index (single-partition runs and batches alike)."""

from __future__ import annotations

import base64
from typing import Any

from dagster import MetadataValue

from stacchip_assets.dagster_defs.assets.common import index_table_schema, md_table, path_or_url
from stacchip_assets.index.item_index import ItemIndexResult


def _summary(result: ItemIndexResult, cloud: dict[str, float], nodata: dict[str, float]) -> str:
    """Markdown: chips kept/dropped, the grid, the distributions of cloud and nodata, where the index is."""
    stats = ("min", "p10", "p25", "p50", "p75", "p90", "max", "mean")
    dist_rows = [(k, cloud.get(k), nodata.get(k)) for k in stats] if cloud else []
    return "\n".join(
        [
            f"### {result.collection} / {result.item_id}",
            f"**{result.chips_kept}** chips kept, **{result.chips_dropped}** dropped (nodata above "
            f"{result.settings.chip_max_nodata:.0%}) of {result.chips_total} "
            f"({result.grid_chips[0]} x {result.grid_chips[1]} chips of {result.settings.chip_size} px on a "
            f"{result.grid_shape[0]} x {result.grid_shape[1]} px grid, {result.indexer_class}).",
            "" if result.explanation is None else f"\n**Empty index:** {result.explanation}.",
            "",
            md_table(["statistic", "cloud", "nodata"], dist_rows) if dist_rows else "",
            "",
            f"Item updated {result.item_updated}; index at `{result.index_uri}`.",
        ]
    )


def chip_index_metadata(result: ItemIndexResult, source: str) -> dict[str, Any]:
    """Metadata of a chip_index materialization: counts, distributions, quicklook, provenance."""
    png64 = base64.b64encode(result.quicklook_png).decode()
    cloud = result.distribution("cloud_cover_percentage")
    nodata = result.distribution("nodata_percentage")
    return {
        "dagster/row_count": MetadataValue.int(result.chips_kept),
        "dagster/column_schema": index_table_schema(),
        "chips_kept": MetadataValue.int(result.chips_kept),
        "chips_dropped": MetadataValue.int(result.chips_dropped),
        "chips_total": MetadataValue.int(result.chips_total),
        "cloud_cover_distribution": MetadataValue.json(cloud),
        "nodata_distribution": MetadataValue.json(nodata),
        "path": MetadataValue.path(result.index_uri),
        "summary": MetadataValue.md(_summary(result, cloud, nodata)),
        "quicklook": MetadataValue.md(f"![quicklook](data:image/png;base64,{png64})"),
        "quicklook_path": MetadataValue.path(result.quicklook_uri),
        "collection": MetadataValue.text(result.collection),
        "stac_item_id": MetadataValue.text(result.item_id),
        "stac_item_updated": MetadataValue.text(result.item_updated),
        "stac_item_href": path_or_url(result.source_href),
        "stored_item": MetadataValue.path(result.item_uri),
        "stac_source": MetadataValue.text(source),
        "chip_settings": MetadataValue.json(result.settings.to_dict()),
        "indexer": MetadataValue.text(result.indexer_class),
        "explanation": MetadataValue.text(result.explanation or ""),
        "content_hash": MetadataValue.text(result.content_hash),
    }
