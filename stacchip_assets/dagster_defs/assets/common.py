"""What the three assets share: keys, partitions, code versions, pools, metadata helpers, failures.

Wiring only: nothing here computes an index; it names things and turns results and errors into
Dagster values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dagster import AssetKey, DynamicPartitionsDefinition, Failure, MetadataValue, TableColumn, TableSchema

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StacchipError
from stacchip_assets.io.geoparquet import INDEX_SCHEMA

STAC_ITEMS_KEY = AssetKey("stac_items")
CHIP_INDEX_KEY = AssetKey("chip_index")
COMBINED_INDEX_KEY = AssetKey("combined_index")

#: Concurrency pools (limits set in the instance: deploy/*.yaml `concurrency.pools`, or
#: `dagster instance concurrency set <pool> <n>`; unlimited when the instance sets none).
INDEX_POOL = "stacchip_index"
COMBINE_POOL = "stacchip_combine"

#: Name of the dynamic partitions definition of chip_index (one partition per STAC item).
ITEM_PARTITIONS_NAME = "stac_items_dynamic"
item_partitions = DynamicPartitionsDefinition(name=ITEM_PARTITIONS_NAME)

# Bump when the output of an asset changes for the same input (Dagster then marks it stale).
STAC_ITEMS_CODE_VERSION = "1"
CHIP_INDEX_CODE_VERSION = "1"
COMBINED_INDEX_CODE_VERSION = "1"

#: combined_index has no automation condition: the `combined_index_trigger` sensor (combined_trigger.py)
#: requests its runs from the cursor each combined materialization records (issue 16).

CHIP_INDEX_CHECKS = (
    ("non_empty_or_explained", "The index has rows, or the metadata says why not (grid smaller than a chip, all chips nodata)."),
    ("geometries_valid_and_inside_footprint", "Footprints are valid polygons that lie in the item footprint (up to the nodata allowance)."),
    ("stats_in_unit_interval", "cloud_cover_percentage and nodata_percentage are fractions in [0, 1], nodata within chip_max_nodata."),
)

COLUMN_DOCS = {
    "chipid": "{item_id}-{x}-{y}; unique with collection",
    "date": "the item's date",
    "chip_index_x": "chip column (east)",
    "chip_index_y": "chip row (south)",
    "cloud_cover_percentage": "cloud fraction in [0, 1]",
    "nodata_percentage": "nodata fraction in [0, 1]",
    "geometry": "footprint, WKB polygon in OGC:CRS84",
    "bbox": "GeoParquet 1.1 covering bbox",
    "collection": "STAC collection id",
    "item_id": "STAC item id",
    "datetime": "the item's datetime (UTC)",
    "item_href": "stored item JSON (enough to read the pixels back)",
    "chip_size": "chip size in pixels",
    "chip_stride": "pixels between chip origins",
}


def item_partition_key(collection: str, item_id: str) -> str:
    """The chip_index partition key of an item: ``{collection}/{item_id}``."""
    return f"{validate_id(collection, 'collection')}/{validate_id(item_id, 'item')}"


def split_item_partition_key(key: str) -> tuple[str, str]:
    """(collection, item_id) of a chip_index partition key; StacchipError if it is not one."""
    collection, sep, item_id = key.partition("/")
    if not sep:
        raise StacchipError(f"partition key {key!r} is not of the form collection/item_id")
    return validate_id(collection, "collection"), validate_id(item_id, "item")


def index_table_schema() -> TableSchema:
    """The index columns with their meaning (`dagster/column_schema` of chip_index and combined_index)."""
    return TableSchema(columns=[TableColumn(f.name, str(f.type), description=COLUMN_DOCS.get(f.name)) for f in INDEX_SCHEMA])


def md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A Markdown table (floats to 3 decimals, pipes escaped) for materialization metadata."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|") if v is not None else ""

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def path_or_url(value: str | None) -> MetadataValue:
    """A URL metadata value for http(s) hrefs, a path for anything else."""
    if not value:
        return MetadataValue.text("")
    return MetadataValue.url(value) if value.startswith(("http://", "https://")) else MetadataValue.path(value)


def failure(exc: BaseException, what: str) -> Failure:
    """A Dagster Failure; retried (RetryPolicy) only when the error says it may be transient.

    The decision is the error's type (`StacchipError.transient`), never its message: bad metadata,
    a 404, refused credentials stay what they are. Outside the StacchipError family only network
    and OS errors (ConnectionError, TimeoutError, OSError) are retried; anything else is a bug or
    an unforeseen input, which a retry would only repeat.
    """
    text = str(exc)
    transient = bool(exc.transient) if isinstance(exc, StacchipError) else isinstance(exc, OSError)
    return Failure(description=f"{what}: {type(exc).__name__}: {text}",
                   metadata={"error": text, "transient": transient}, allow_retries=transient)
