"""The rule of the combined index: **the combined index = the chips of the items currently in the item
sets, indexed with the collection's current chip settings.**

:func:`plan_rule` (pure) compares the item sets (:mod:`stacchip_assets.index.item_sets`) with what the
combined index holds and says, per item, what to add, replace and remove, and why:

- an item in its set, indexed with the set's chip settings, not combined yet: **add** (naming the items
  it superseded, if any);
- a combined item whose per-item index changed (re-indexed) or whose chips were cut with other chip
  settings than the set's: **replace** once its per-item index has the current settings;
- a combined item that left its set: **remove**, with the set's reason (superseded by which item,
  withdrawn from the source, no longer selected by the search) or "not in the item set";
- an item in its set without an index of the current settings: **waiting** for `chip_index` (its old
  chips, if any, stay until the new ones replace them: re-indexing a collection never empties it).

Collections without a stored item set are not governed: their items are combined as indexed.
:func:`enforce` reads the inputs from storage and applies the plan through
:meth:`stacchip_assets.index.combined.CombinedIndex.update` (journaled, so the caller's totals stay
exact). Cost: one listing of each folder, plus Parquet footers only of the items that changed, of the
items to add, and (once, after a settings change) of the combined items of that collection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined import CombinedIndex, CombineReport, combined_key
from stacchip_assets.index.item_sets import SETTINGS_METADATA_KEY, ItemSet, load_item_sets
from stacchip_assets.io.storage import Storage

ADD, REPLACE, REMOVE, WAIT = "add", "replace", "remove", "waiting"
#: What a fingerprint lookup returns for an item without a per-item index.
MISSING = "<missing>"

Key = tuple[str, str]


@dataclass(frozen=True)
class Change:
    collection: str
    item_id: str
    action: str  # ADD, REPLACE, REMOVE or WAIT
    reason: str

    @property
    def key(self) -> Key:
        return (self.collection, self.item_id)

    def line(self) -> str:
        return f"{self.collection}/{self.item_id}: {self.reason}"


@dataclass
class RulePlan:
    """What brings the combined index back to the rule."""

    changes: list[Change] = field(default_factory=list)
    #: collections with a stored item set, and the fingerprint of their chip settings
    governed: dict[str, str | None] = field(default_factory=dict)
    #: indexed items left out because they are not in their collection's set
    not_in_set: list[Key] = field(default_factory=list)

    def of(self, action: str) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def upserts(self) -> list[Key]:
        return [c.key for c in self.changes if c.action in (ADD, REPLACE)]

    @property
    def removals(self) -> list[Key]:
        return [c.key for c in self.of(REMOVE)]

    def to_json(self, limit: int = 100) -> dict[str, Any]:
        out: dict[str, Any] = {a: [c.line() for c in self.of(a)[:limit]] for a in (ADD, REPLACE, REMOVE, WAIT)}
        out["counts"] = {a: len(self.of(a)) for a in (ADD, REPLACE, REMOVE, WAIT)}
        out["not_in_set"] = [f"{c}/{i}" for c, i in self.not_in_set[:limit]]
        return out

    def markdown(self, limit: int = 20) -> str:
        parts = []
        for action, title in ((ADD, "Added"), (REPLACE, "Replaced"), (REMOVE, "Removed"), (WAIT, "Waiting for chip_index")):
            changes = self.of(action)
            if changes:
                more = f"\n- ... and {len(changes) - limit} more" if len(changes) > limit else ""
                parts.append(f"**{title} ({len(changes)}):**\n" + "\n".join(f"- {c.line()}" for c in changes[:limit]) + more)
        return "\n\n".join(parts) or "The combined index holds exactly the items of the item sets."


def _collection_changes(item_set: ItemSet, combined: set[str], changed: set[str], settings_changed: bool,
                        index_fp: Callable[[str], str | None], combined_fp: Callable[[str], str | None]) -> list[Change]:
    """The changes of one governed collection (see the module docstring)."""
    c, want = item_set.collection, item_set.fingerprint

    def current(fp: str | None) -> bool:  # an index of unknown settings (written before fingerprints) counts
        return want is None or fp == want or (fp is None and not settings_changed)  # as current unless they changed

    replaced_by: dict[str, list[str]] = {}
    for d in item_set.departed.values():
        if d.by:
            replaced_by.setdefault(d.by, []).append(d.item_id)
    out: list[Change] = []
    for item_id in sorted(combined - item_set.ids):
        departure = item_set.departed.get(item_id)
        out.append(Change(c, item_id, REMOVE, departure.describe() if departure else "not in the item set"))
    for item_id in item_set.members:
        in_combined = item_id in combined
        if in_combined and item_id not in changed and not (settings_changed and not current(combined_fp(item_id))):
            continue
        fp = index_fp(item_id)
        if fp == MISSING:
            if in_combined and item_id in changed:
                out.append(Change(c, item_id, REMOVE, "its per-item index is gone"))
            elif not in_combined:
                out.append(Change(c, item_id, WAIT, "in the item set, not indexed yet"))
            continue
        if not current(fp):
            out.append(Change(c, item_id, WAIT, f"indexed with other chip settings ({fp}), re-index with {want}"
                              + ("; its old chips stay until then" if in_combined else "")))
        elif not in_combined:
            supersedes = replaced_by.get(item_id)
            out.append(Change(c, item_id, ADD, "in the item set" + (f", supersedes {', '.join(sorted(supersedes))}"
                                                                    if supersedes else "")))
        elif item_id in changed:
            out.append(Change(c, item_id, REPLACE, "re-indexed"))
        else:
            out.append(Change(c, item_id, REPLACE, f"chip settings changed ({combined_fp(item_id)} -> {want})"))
    return out


def plan_rule(sets: Mapping[str, ItemSet], combined: Iterable[Key], changed: Iterable[Key], *,
              known_settings: Mapping[str, str | None],
              index_fp: Callable[[str, str], str | None], combined_fp: Callable[[str, str], str | None]) -> RulePlan:
    """What to add, replace and remove so that the combined index follows the rule (pure: the
    fingerprint lookups are passed in; `index_fp` returns :data:`MISSING` for an item without a per-item
    index). `changed`: items whose per-item index changed since the last update (e.g. from the event
    log); `known_settings`: the fingerprint of each collection's settings at the last update (a
    collection whose fingerprint differs now has its combined items' settings checked)."""
    combined_by: dict[str, set[str]] = {}
    for c, i in combined:
        combined_by.setdefault(c, set()).add(i)
    changed = set(changed)
    changed_by: dict[str, set[str]] = {}
    for c, i in changed:
        changed_by.setdefault(c, set()).add(i)
    plan = RulePlan(governed={c: s.fingerprint for c, s in sets.items()})
    for c, item_set in sorted(sets.items()):
        settings_changed = c in known_settings and known_settings[c] != item_set.fingerprint
        plan.changes += _collection_changes(
            item_set, combined_by.get(c, set()), changed_by.get(c, set()), settings_changed,
            functools.partial(index_fp, c), functools.partial(combined_fp, c))
        plan.not_in_set += sorted((c, i) for i in changed_by.get(c, set()) - item_set.ids - combined_by.get(c, set()))
    # collections without an item set: combined as indexed (upsert what changed)
    plan.changes += [Change(c, i, REPLACE if i in combined_by.get(c, set()) else ADD, "re-indexed (no item set)")
                     for c, i in sorted(changed) if c not in sets]
    return plan


def parquet_fingerprint(storage: Storage, key: str) -> str | None:
    """The chip-settings fingerprint in a Parquet file's footer (None if it has none), :data:`MISSING`
    if the file does not exist."""
    try:
        with storage.fs.open_input_file(storage.path(key)) as src:
            metadata = pq.ParquetFile(src).schema_arrow.metadata or {}
    except FileNotFoundError:
        return MISSING
    except (OSError, pa.ArrowException) as exc:
        if not storage.exists(key):
            return MISSING
        raise StorageError(f"cannot read the footer of {storage.uri(key)}: {exc}") from exc
    value = metadata.get(SETTINGS_METADATA_KEY.encode())
    return value.decode() if value is not None else None


@dataclass
class RuleResult:
    plan: RulePlan
    report: CombineReport


def enforce(storage: Storage, changed: Iterable[Key], *, known_settings: Mapping[str, str | None] | None = None,
            full: bool = False, journal: str | None = None, committed: str | None = None) -> RuleResult:
    """Bring the combined index of `storage` to the rule: plan (:func:`plan_rule`) and apply it in one
    journaled update. `full`: take as changed what two folder listings show changed (a rebuild, see
    :meth:`CombinedIndex.plan_sync`) instead of `changed`."""
    combined = CombinedIndex(storage)
    entries = combined.entries()
    if full:  # per-item indexes newer than their combined copy, and combined items without one
        newer, orphans = combined.plan_sync()
        changed = newer + orphans
    plan = plan_rule(
        load_item_sets(storage), entries, changed, known_settings=known_settings or {},
        index_fp=lambda c, i: parquet_fingerprint(storage, Storage.index_key(c, i)),
        combined_fp=lambda c, i: parquet_fingerprint(storage, combined_key(c, i)),
    )
    report = combined.update(plan.upserts, remove=plan.removals, journal=journal, committed=committed)
    return RuleResult(plan, report)


def holds(storage: Storage) -> tuple[bool, dict[str, list[str]]]:
    """Whether the item ids of the combined index equal the union of the item sets (governed
    collections): (passed, {"missing": [...], "extra": [...]}) with ``collection/item_id`` names."""
    sets = load_item_sets(storage)
    present = {(c, i) for c, i in CombinedIndex(storage).items() if c in sets}
    expected = {(c, i) for c, s in sets.items() for i in s.ids}
    missing = sorted(f"{c}/{i}" for c, i in expected - present)
    extra = sorted(f"{c}/{i}" for c, i in present - expected)
    return not missing and not extra, {"missing": missing, "extra": extra}


__all__ = ["ADD", "MISSING", "REMOVE", "REPLACE", "WAIT", "Change", "RulePlan", "RuleResult", "enforce", "holds",
           "parquet_fingerprint", "plan_rule"]
