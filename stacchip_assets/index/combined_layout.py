"""Keys of the combined index and the report of one update: the part that the combined index
(:mod:`stacchip_assets.index.combined`) and its compacted tier (:mod:`stacchip_assets.index.compaction`)
share, so that neither needs to import the other to name a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stacchip_assets.core.ids import validate_id
from stacchip_assets.io.storage import COMBINED_DIR


def collection_folder(collection: str) -> str:
    """The folder name of a collection (validated; ``=`` stored as ``%3D``, see combined.py)."""
    return validate_id(collection, "collection").replace("=", "%3D")


def collection_of_folder(name: str) -> str:
    """The collection id of a folder name (inverse of :func:`collection_folder`)."""
    return name.replace("%3D", "=")


#: What the last update found before it copied (see :mod:`stacchip_assets.index.combined`), hidden from readers.
JOURNAL_KEY = f"{COMBINED_DIR}/_journal.json"


def combined_key(collection: str, item_id: str) -> str:
    """Key of one item's file in the combined index."""
    return f"{COMBINED_DIR}/{collection_folder(collection)}/{validate_id(item_id, 'item')}.parquet"


@dataclass
class CombineReport:
    """What one update of the combined index did."""

    upserted: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    missing_sources: list[tuple[str, str]] = field(default_factory=list)
    rows_added: int = 0
    rows_removed: int = 0
    #: (collection, item_id) -> rows now in the combined index for that item (0 if removed)
    rows_by_item: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (collection, item_id) -> rows that item had in the combined index before the update
    previous_rows_by_item: dict[tuple[str, str], int] = field(default_factory=dict)
    #: items that had a file in the combined index before the update
    existed_before: set[tuple[str, str]] = field(default_factory=set)

    @property
    def items_changed(self) -> int:
        return len(self.upserted) + len(self.removed)
