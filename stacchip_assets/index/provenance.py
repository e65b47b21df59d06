"""Where a chip comes from: the chip_index partition, data version and STAC item version behind a chip id.

A chip id is ``{item_id}-{x}-{y}`` (unique with its collection). :func:`chip_provenance` finds the
chip's row in the combined index (the copy the combined index serves), else in the per-item index,
and says:

- the ``chip_index`` partition that produced it: ``{collection}/{item_id}``;
- its data version: the sha256 of the index table its row was read from
  (:func:`stacchip_assets.index.item_index.table_hash`), which is exactly the Dagster data version
  of the ``chip_index`` materialization that wrote that index (so the materialization can be found
  in the event log by partition and ``dagster/data_version``); when the item was re-indexed after
  the last combined update, ``index_data_version`` (the per-item index now) differs;
- the STAC item version: id, ``updated`` (else ``created``/datetime) and the source href of the item as
  indexed (the ``via`` link of the stored item), plus the stored item's URI.

No Dagster needed: everything is read from the storage base.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
import pystac

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StacchipError
from stacchip_assets.index.combined_layout import collection_of_folder, combined_key
from stacchip_assets.index.item_index import table_hash
from stacchip_assets.io.stac_source import item_updated
from stacchip_assets.io.storage import COMBINED_DIR, Storage


class ChipNotFoundError(StacchipError):
    """No index under the storage base holds the chip id."""


@dataclass(frozen=True)
class ChipProvenance:
    chipid: str
    collection: str
    item_id: str
    x: int
    y: int
    partition_key: str
    data_version: str
    found_in: str  # "combined" or "index"
    table_uri: str
    index_data_version: str | None
    stac_item_id: str
    stac_item_updated: str
    stac_item_href: str | None
    stored_item: str
    row: dict[str, Any]

    @property
    def combined_is_current(self) -> bool:
        """Whether the per-item index is still the one the combined index copied."""
        return self.index_data_version == self.data_version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_chipid(chipid: str) -> tuple[str, int, int]:
    """``{item_id}-{x}-{y}`` -> (item_id, x, y)."""
    item_id, sep, rest = chipid.rpartition("-")
    item_id, sep2, xs = item_id.rpartition("-")
    if not (sep and sep2 and item_id) or not (xs.isdigit() and rest.isdigit()):
        raise StacchipError(f"chip id {chipid[:120]!r} is not of the form item_id-x-y")
    return validate_id(item_id, "item"), int(xs), int(rest)


def _candidates(storage: Storage, item_id: str, collection: str | None) -> list[tuple[str, str, str]]:
    """(collection, found_in, key) of the tables that may hold the item's chips, combined first."""
    if collection is not None:
        validate_id(collection, "collection")
        keys = [(collection, "combined", combined_key(collection, item_id)),
                (collection, "index", storage.index_key(collection, item_id))]
        return [c for c in keys if storage.exists(c[2])]
    found = [(collection_of_folder(e.key.split("/")[1]), "combined", e.key)
             for e in storage.list_files(COMBINED_DIR, suffix=f"/{item_id}.parquet") if e.key.count("/") == 2]
    found += [(c, "index", e.key) for c, i, e in storage.indexed_items() if i == item_id]
    return found


def _source_href(stored: dict[str, Any]) -> str | None:
    return next((link.get("href") for link in stored.get("links", []) if link.get("rel") == "via"), None)


def chip_provenance(chipid: str, base: str | Storage, collection: str | None = None) -> ChipProvenance:
    """Which chip_index partition, data version and STAC item version produced chip `chipid`.

    `collection` narrows the search (without it, the combined and index folders are listed)."""
    storage = base if isinstance(base, Storage) else Storage(base)
    item_id, x, y = split_chipid(chipid)
    for coll, found_in, key in _candidates(storage, item_id, collection):
        table = storage.read_table(key)
        match = table.filter(pc.equal(table.column("chipid"), chipid))
        if match.num_rows == 0:
            continue
        row = {k: v for k, v in match.slice(0, 1).to_pylist()[0].items() if k not in ("geometry", "bbox")}
        index_key = storage.index_key(coll, item_id)
        index_version = (table_hash(table) if found_in == "index"
                         else table_hash(storage.read_table(index_key)) if storage.exists(index_key) else None)
        stored = json.loads(storage.read_bytes(storage.item_key(coll, item_id)))
        item = pystac.Item.from_dict(stored, preserve_dict=True)
        return ChipProvenance(
            chipid=chipid, collection=coll, item_id=item_id, x=x, y=y, partition_key=f"{coll}/{item_id}",
            data_version=table_hash(table), found_in=found_in, table_uri=storage.uri(key),
            index_data_version=index_version, stac_item_id=item.id, stac_item_updated=item_updated(item),
            stac_item_href=_source_href(stored), stored_item=storage.uri(storage.item_key(coll, item_id)), row=row,
        )
    raise ChipNotFoundError(f"no index under {storage.uri()} holds chip {chipid!r}", item_id=item_id)
