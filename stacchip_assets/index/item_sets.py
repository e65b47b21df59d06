"""The item sets: the items each configured collection's search selects -- the source of truth of the
combined index (see :mod:`stacchip_assets.index.set_rule` for the rule itself).

Layout::

    {base}/item_sets/{collection}.json          the set: its items (id, tile-quarter group, ...), the
                                                collection's chip settings and their fingerprint, and
                                                the items that left it and why ("departed")
    {base}/item_sets/_state/{collection}.json   the least-cloudy selection state: for each
                                                (tile, year, quarter) the item selected and its rank

Two paths change a set:

- :func:`reconcile_item_set` -- a full search (the ``stac_items`` materialization): the new set replaces
  the old one; every item that left is recorded with its reason: *superseded by* the item now selected
  for its tile-quarter, *withdrawn from the source* (the source no longer has it), or *no longer
  selected by the search*. The selection state is rebuilt from the search.
- :func:`offer_items` -- incremental (a sensor tick with new or updated items): each item is offered to
  the selection state of its tile-quarter; a better one evicts exactly the item it replaces, nothing
  else is searched. Items of a collection without a selection rule join the set as they are.

Every write is atomic (:mod:`stacchip_assets.io.storage`); ids are validated before they become keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pystac

from stacchip_assets.core.ids import validate_id
from stacchip_assets.io.stac_search import SELECTION_LEAST_CLOUDY, SearchParams, _item_time, tile_of
from stacchip_assets.io.storage import ITEM_SETS_DIR, Storage

#: Parquet key-value metadata of a per-item index naming the chip settings it was built with.
SETTINGS_METADATA_KEY = "stacchip:chip_settings"
STATE_DIR = f"{ITEM_SETS_DIR}/_state"
#: Departures kept in a listing (the most recent ones).
MAX_DEPARTURES = 10000

SUPERSEDED, WITHDRAWN, DESELECTED = "superseded", "withdrawn", "deselected"


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of a collection's chip settings (what a per-item index was built with)."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=list).encode()).hexdigest()[:16]


def state_key(collection: str) -> str:
    return f"{STATE_DIR}/{validate_id(collection, 'collection')}.json"


def item_group(item: pystac.Item, params: SearchParams) -> str | None:
    """The item's (tile, year, quarter) as ``tile|YYYY|Qn``; None for an undated item."""
    when = _item_time(item)
    if when is None:
        return None
    return f"{tile_of(item, params.tile_properties)}|{when.year}|Q{(when.month - 1) // 3 + 1}"


def item_rank(item: pystac.Item, params: SearchParams) -> list:
    """The least-cloudy order (as in ``select_least_cloudy_per_tile_quarter``): cloud cover (missing:
    100), then the earliest, then the id."""
    cloud = item.properties.get(params.cloud_property)
    when = _item_time(item)
    return [float(cloud) if cloud is not None else 100.0, when.isoformat() if when else "", item.id]


@dataclass(frozen=True)
class Departure:
    """An item that left a set: why, and (when superseded) the item that took its place."""

    item_id: str
    reason: str  # SUPERSEDED, WITHDRAWN or DESELECTED
    by: str | None = None
    at: str = ""

    def describe(self) -> str:
        if self.reason == SUPERSEDED:
            return f"superseded by {self.by}"
        if self.reason == WITHDRAWN:
            return "withdrawn from the source"
        return "no longer selected by the search"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": self.at}


@dataclass
class ItemSet:
    """A stored item set (``{base}/item_sets/{collection}.json``) as the rule reads it."""

    collection: str
    members: dict[str, dict[str, Any]]  # id -> its listing entry (order kept)
    fingerprint: str | None = None
    settings: dict[str, Any] | None = None
    departed: dict[str, Departure] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> set[str]:
        return set(self.members)

    @classmethod
    def load(cls, storage: Storage, collection: str) -> ItemSet | None:
        key = storage.item_set_key(collection)
        if not storage.exists(key):
            return None
        data = storage.read_json(key)
        departed = {i: Departure(i, d.get("reason", DESELECTED), d.get("by"), d.get("at", ""))
                    for i, d in (data.get("departed") or {}).items()}
        return cls(collection=collection, members={e["id"]: e for e in data.get("items", [])},
                   fingerprint=data.get("settings_version"), settings=data.get("chip_settings"),
                   departed=departed, listing=data)

    def save(self, storage: Storage) -> str:
        departed = sorted(self.departed.values(), key=lambda d: d.at)[-MAX_DEPARTURES:]
        data = {**self.listing, "collection": self.collection, "items": list(self.members.values()),
                "chip_settings": self.settings, "settings_version": self.fingerprint,
                "departed": {d.item_id: d.to_json() for d in departed}}
        return storage.write_json(storage.item_set_key(self.collection), data)


def load_item_sets(storage: Storage) -> dict[str, ItemSet]:
    """Every stored item set, by collection (one listing of ``{base}/item_sets/``)."""
    sets = {}
    for entry in storage.list_files(ITEM_SETS_DIR, suffix=".json"):
        parts = entry.key.split("/")
        if len(parts) == 2:
            item_set = ItemSet.load(storage, parts[1][: -len(".json")])
            if item_set is not None:
                sets[item_set.collection] = item_set
    return sets


@dataclass
class SelectionState:
    """The least-cloudy selection of one collection: group (``tile|YYYY|Qn``) -> {"id", "rank"}."""

    collection: str
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, storage: Storage, collection: str) -> SelectionState:
        key = state_key(collection)
        data = storage.read_json(key) if storage.exists(key) else {}
        return cls(collection, dict(data.get("groups", {})))

    def save(self, storage: Storage) -> str:
        return storage.write_json(state_key(self.collection), {"collection": self.collection, "groups": self.groups})

    def offer(self, item_id: str, group: str, rank: list) -> tuple[bool, str | None]:
        """(selected, the item it evicts). The item currently selected for the group is replaced only by
        a better-ranked one; a new version of the selected item itself stays selected."""
        current = self.groups.get(group)
        if current is None or current["id"] == item_id or list(rank) < list(current["rank"]):
            self.groups[group] = {"id": item_id, "rank": list(rank)}
            evicted = current["id"] if current is not None and current["id"] != item_id else None
            return True, evicted
        return False, None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _entry(item: pystac.Item, params: SearchParams, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**(summary or {}), "id": item.id, "group": item_group(item, params), "rank": item_rank(item, params)}


@dataclass
class SetChange:
    """What one change of an item set did."""

    collection: str
    added: list[str] = field(default_factory=list)
    departed: list[Departure] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)
    settings_changed: tuple[str | None, str] | None = None  # (old fingerprint, new) when they differ

    def lines(self, limit: int = 50) -> list[str]:
        out = [f"{d.item_id}: {d.describe()}" for d in self.departed[:limit]]
        if self.settings_changed:
            out.append(f"chip settings changed ({self.settings_changed[0]} -> {self.settings_changed[1]})")
        return out


def reconcile_item_set(storage: Storage, collection: str, items: list[pystac.Item], *, params: SearchParams,
                       settings: Mapping[str, Any], in_source: Callable[[str], bool],
                       listing: Mapping[str, Any] | None = None,
                       summaries: Mapping[str, Mapping[str, Any]] | None = None) -> SetChange:
    """Replace a collection's set by the result of a full search (`items`) and record why each item left.

    `in_source(item_id)` tells a withdrawn item from one the search no longer selects (asked only for
    items that left without a successor in their tile-quarter). The selection state is rebuilt from the
    search; the listing keeps `listing`'s other fields (source, search, ...).
    """
    previous = ItemSet.load(storage, collection)
    fingerprint = settings_fingerprint(settings)
    members = {i.id: _entry(i, params, (summaries or {}).get(i.id)) for i in items}
    change = SetChange(collection)
    by_group = {e["group"]: i for i, e in members.items() if e["group"] is not None}
    departed = dict(previous.departed) if previous else {}
    now = _now()
    for item_id in members:
        departed.pop(item_id, None)
        if previous is None or item_id not in previous.members:
            change.added.append(item_id)
    for item_id, old in (previous.members.items() if previous else []):
        if item_id in members:
            continue
        successor = by_group.get(old.get("group")) if params.selection == SELECTION_LEAST_CLOUDY else None
        if successor is not None:
            departure = Departure(item_id, SUPERSEDED, successor, now)
        else:
            departure = Departure(item_id, DESELECTED if in_source(item_id) else WITHDRAWN, None, now)
        departed[item_id] = departure
        change.departed.append(departure)
    if previous is not None and previous.fingerprint not in (None, fingerprint):
        change.settings_changed = (previous.fingerprint, fingerprint)
    ItemSet(collection, members, fingerprint, dict(settings), departed, dict(listing or {})).save(storage)
    if params.selection == SELECTION_LEAST_CLOUDY:
        state = SelectionState(collection)
        for entry in members.values():
            if entry["group"] is not None:
                state.offer(entry["id"], entry["group"], entry["rank"])
        state.save(storage)
    return change


def offer_items(storage: Storage, collection: str, items: Iterable[pystac.Item], *, params: SearchParams) -> SetChange:
    """Incremental: offer new or updated items to a collection's set (one tick of a sensor).

    With the least-cloudy rule each item is compared with the one selected for its tile-quarter only
    (the stored state; no search): a better item joins the set and evicts exactly the item it replaces
    ("superseded by"), a worse one is not selected. Without a rule every item joins. Undated items join
    as they are (the rule keeps them too).
    """
    item_set = ItemSet.load(storage, collection) or ItemSet(collection, {})  # settings: set by a reconciliation
    state = SelectionState.load(storage, collection)
    change = SetChange(collection)
    rule = params.selection == SELECTION_LEAST_CLOUDY
    now = _now()
    offered = False
    for item in items:
        offered = True
        entry = _entry(item, params, None)
        if rule and entry["group"] is not None:
            selected, evicted = state.offer(item.id, entry["group"], entry["rank"])
            if not selected:
                change.not_selected.append(item.id)
                continue
            if evicted is not None and item_set.members.pop(evicted, None) is not None:
                departure = Departure(evicted, SUPERSEDED, item.id, now)
                item_set.departed[evicted] = departure
                change.departed.append(departure)
        if item.id not in item_set.members:
            change.added.append(item.id)
        item_set.members[item.id] = {**item_set.members.get(item.id, {}), **entry}
        item_set.departed.pop(item.id, None)
    if offered:
        item_set.save(storage)
        if rule:
            state.save(storage)
    return change


def fetch_if_present(source: Any, collection: str, item_id: str) -> pystac.Item | None:
    """The item from a STAC source (``io.stac_source.StacSource``), or None only when the source answers
    that it is not there; an outage raises (never taken for a withdrawal)."""
    from stacchip_assets.errors import StacSourceError

    try:
        return source.get_item(collection, item_id)
    except StacSourceError as exc:
        if f"no item {item_id!r}" in str(exc):  # the sources' own "not found" (io.stac_source)
            return None
        raise


def source_has(source: Any, collection: str, item_id: str) -> bool:
    """Whether the source still has the item (see :func:`fetch_if_present`)."""
    return fetch_if_present(source, collection, item_id) is not None


def admit_polled(storage: Storage, source: Any, collection: str, polled: list, *,
                 params: SearchParams) -> tuple[list, SetChange] | None:
    """A sensor tick: the items a poll found (``PolledItem``: new or updated after the cursor, polled
    *without* the selection rule) join the collection's set. With the least-cloudy rule each is fetched
    (O(polled), never a search of the collection) and offered to its tile-quarter (:func:`offer_items`);
    without a rule each joins as it is. Returns the polled items selected (to index) and the change;
    None when the collection has no stored set yet (then nothing is written: its first reconciliation,
    a ``stac_items`` materialization, creates the set and the selection state). An item that vanished
    between the poll and the fetch is left out (the next reconciliation records it)."""
    item_set = ItemSet.load(storage, collection)
    if item_set is None:
        return None
    if params.selection != SELECTION_LEAST_CLOUDY:
        change = SetChange(collection, added=[p.item_id for p in polled if p.item_id not in item_set.members])
        if change.added:
            for entry in polled:
                item_set.members.setdefault(entry.item_id, {"id": entry.item_id, "updated": entry.updated})
                item_set.departed.pop(entry.item_id, None)
            item_set.save(storage)
        return list(polled), change
    bodies = [b for b in (fetch_if_present(source, collection, p.item_id) for p in polled) if b is not None]
    change = offer_items(storage, collection, bodies, params=params)
    fetched = {b.id for b in bodies}
    rejected = set(change.not_selected)
    return [p for p in polled if p.item_id in fetched and p.item_id not in rejected], change


__all__ = [
    "DESELECTED", "Departure", "ItemSet", "SETTINGS_METADATA_KEY", "SUPERSEDED", "SelectionState", "SetChange",
    "WITHDRAWN", "item_group", "item_rank", "load_item_sets", "offer_items", "reconcile_item_set", "admit_polled", "fetch_if_present", "source_has",
    "settings_fingerprint", "state_key",
]
