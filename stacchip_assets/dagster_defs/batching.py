"""Batched runs from the item sensor: one run per range of up to N partitions, not one per item.

A Dagster run costs seconds to queue and start; indexing an item costs 0.06-0.3 s. The sensor
therefore asks for runs over *ranges* of chip_index partitions, which `index_batch` (assets) indexes
one item after the other, each reported as its own materialization.

How Dagster 1.13 resolves a range (read in ``dagster/_core/definitions/partitions/definition/
partitions_definition.py``, ``get_partition_keys_in_range``): a run tagged
``dagster/asset_partition_range_start`` / ``_end`` covers the slice of
``DynamicPartitionsDefinition.get_partition_keys()`` from start to end, and the instance lists dynamic
partitions in the order they were added (``ORDER BY id`` in ``sql_event_log.get_dynamic_partitions``;
``add_dynamic_partitions`` inserts the keys of one call in their order). So:

- a tick's *new* keys are registered in order (one ``AddDynamicPartitionsRequest`` for up to
  `MAX_KEYS_PER_REQUEST` keys, more requests in order beyond) and ranged in that same order, per
  collection, in chunks of `partitions_per_run`;
- *existing* keys (an item whose ``updated`` changed) are ranged only where they lie next to each
  other in the partitions' order; elsewhere they get a run of their own (or a smaller range).

Run keys keep the sensor's exactly-once rule per item version: a run of one item keeps the key
``{collection}/{item_id}@{updated}``; a range's key is ``{first}@{updated}+{n-1}#{hash}``, the hash
over the sorted ``key@updated`` of its members. A restarted tick builds the same ranges from the same
cursor (same keys, same order), so Dagster's run-key check skips what was launched already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dagster import AddDynamicPartitionsRequest, RunRequest

from stacchip_assets.dagster_defs.assets import item_partition_key
from stacchip_assets.io.source_base import PolledItem

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
#: Keys per AddDynamicPartitionsRequest (the instance looks them up with one SQL `IN`; SQLite
#: allows 32,766 variables).
MAX_KEYS_PER_REQUEST = 10_000


def partition_requests(name: str, keys: list[str]) -> list[AddDynamicPartitionsRequest]:
    """`keys` as few AddDynamicPartitionsRequests as possible, in order (one for <= 10,000 keys)."""
    return [AddDynamicPartitionsRequest(name, keys[i:i + MAX_KEYS_PER_REQUEST])
            for i in range(0, len(keys), MAX_KEYS_PER_REQUEST)]


def batch_run_key(members: list[tuple[str, str]]) -> str:
    """The run key of a run over (partition key, updated) `members`: the item version's key for one."""
    first, updated = members[0]
    if len(members) == 1:
        return f"{first}@{updated}"
    digest = hashlib.sha256("\n".join(sorted(f"{k}@{u}" for k, u in members)).encode()).hexdigest()[:20]
    return f"{first}@{updated}+{len(members) - 1}#{digest}"


def _run(collection: str, members: list[tuple[str, str]]) -> RunRequest:
    tags = {"stacchip/collection": collection, "stacchip/item_updated": max(u for _, u in members),
            "stacchip/items": str(len(members))}
    if len(members) == 1:
        return RunRequest(partition_key=members[0][0], run_key=batch_run_key(members), tags=tags)
    tags.update({RANGE_START_TAG: members[0][0], RANGE_END_TAG: members[-1][0]})
    return RunRequest(run_key=batch_run_key(members), tags=tags)


def _chunks(members: list[tuple[int, str, str]], size: int) -> Iterable[list[tuple[int, str, str]]]:
    for i in range(0, len(members), size):
        yield members[i:i + size]


def plan_runs(items: list[PolledItem], existing: set[str], partitions_per_run: int,
              order: dict[str, int] | None = None) -> list[RunRequest]:
    """Run requests covering each of `items` once: new partitions in ranges of their registration
    order, existing ones in ranges of neighbours in `order` ({key: place}; without it, one run each).
    Runs come oldest first (by the first member's place in `items`)."""
    size = max(1, int(partitions_per_run))
    order = order or {}
    planned: list[tuple[int, RunRequest]] = []
    groups: dict[tuple[str, bool], list[tuple[int, str, str]]] = {}
    seen: set[str] = set()
    for place, item in enumerate(items):
        key = item_partition_key(item.collection, item.item_id)
        if key in seen:
            continue
        seen.add(key)
        groups.setdefault((item.collection, key in existing), []).append((place, key, item.updated))
    for (collection, is_existing), members in groups.items():
        if not is_existing:
            segments = [members]
        else:  # contiguous in the partitions' order, else alone
            members = sorted(members, key=lambda m: (order.get(m[1], -1), m[0]))
            segments, last = [], None
            for m in members:
                here = order.get(m[1])
                if segments and here is not None and last is not None and here == last + 1:
                    segments[-1].append(m)
                else:
                    segments.append([m])
                last = here
        for segment in segments:
            for chunk in _chunks(segment, size):
                planned.append((chunk[0][0], _run(collection, [(k, u) for _, k, u in chunk])))
    return [run for _, run in sorted(planned, key=lambda x: x[0])]


def requested_keys(run: RunRequest, partition_keys: list[str]) -> list[str]:
    """The partitions a run request covers, given the partitions in their order (for tests and tools)."""
    if run.partition_key is not None:
        return [run.partition_key]
    start, end = run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]
    return partition_keys[partition_keys.index(start):partition_keys.index(end) + 1]


__all__ = ["MAX_KEYS_PER_REQUEST", "RANGE_END_TAG", "RANGE_START_TAG", "batch_run_key", "partition_requests",
           "plan_runs", "requested_keys"]
