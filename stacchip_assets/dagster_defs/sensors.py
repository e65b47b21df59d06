"""Sensors: new STAC items -> dynamic partitions + chip-index runs; the combined index follows.

`stac_item_sensor` polls every configured collection for items whose `updated` time is after its
cursor (one cursor per collection, JSON) and returns, in one `SensorResult`, the new partitions (one
request, in order) and runs over ranges of up to STACCHIP_BACKFILL_PARTITIONS_PER_RUN of them
(:mod:`.batching`). Run keys name the item versions a run covers (``{collection}/{item_id}@{updated}``
for one item, that of the first plus a hash of all for a range): a restarted sensor never indexes the
same item version twice, an updated item is re-indexed, and a failed run can be retried by hand
(Dagster never relaunches a run key). A failing source raises: the tick fails and the cursor stays
where it was.

Untrusted sources: a malformed item (bad id, datetime or `updated`; `updated` in the future) is
skipped, never failing its neighbours or the collection's poll; the cursor only takes validated item
times, never later than now + `FUTURE_TOLERANCE` (see `stacchip_assets.io.source_guards`). What a tick
skipped is logged (one warning per collection, naming the items), written in the cursor under
``"reported"`` (the latest tick's problems per collection, see :func:`cursor_reports`) and, on a tick
without runs, in the skip reason. The tick budget is passed into each collection's poll, so a long
or looping paging stops inside the collection (keeping what it read) rather than after it.

At scale: a tick asks each collection for at most `max_items_per_tick` items
(STACCHIP_MAX_ITEMS_PER_TICK, default 10,000) and the next tick carries on from the cursor. Static
catalogs are polled incrementally (only changed item files are read, see
`stacchip_assets.io.catalog_index`). Which of a tick's items are new partitions is one bounded query
to the instance for the tick's keys (not one per item), and only new keys are requested.

The combined index follows through `combined_index_trigger` (combined_trigger.py), a sensor over the
event log, not an automation condition (issue 16).
"""


import dataclasses
import datetime as dt
import json
import time
from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from stacchip_assets.dagster_defs.assets import ITEM_PARTITIONS_NAME, item_partition_key
from stacchip_assets.dagster_defs.batching import partition_requests, plan_runs
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.resources import StacSourceResource, StorageResource
from stacchip_assets.errors import StacchipError
from stacchip_assets.index.item_sets import admit_polled
from stacchip_assets.io.settings import Settings, load_settings
from stacchip_assets.io.source_base import PolledItem
from stacchip_assets.io.source_guards import FUTURE_TOLERANCE, SourceReport, canonical
from stacchip_assets.io.stac_search import SELECTION_ALL
from stacchip_assets.io.storage import Storage

CURSOR_VERSION = 1
#: Stop polling (further pages or collections) after this long (a tick times out after 60 s).
TICK_BUDGET_SECONDS = 40.0
#: Problems kept per collection in the cursor's "reported" entry.
CURSOR_REPORTED = 20
#: Seconds between two polls of the STAC sources (environment variable, default 60).
def sensor_interval_seconds(settings: Settings | None = None) -> int:
    """`STACCHIP_SENSOR_INTERVAL_SECONDS` (default 60), from `io.settings`."""
    return (load_settings() if settings is None else settings).sensor_interval_seconds


#: Run tag that the run queue's concurrency limit for combined-index runs matches.
COMBINE_TAG = {"stacchip/role": "combine"}


def parse_cursor(text: str | None) -> dict[str, tuple[str, str]]:
    """{collection: (updated, item_id)} from a sensor cursor (empty if none)."""
    if not text:
        return {}
    data = json.loads(text)
    return {c: (v[0], v[1]) for c, v in data.get("collections", {}).items()}


def dump_cursor(positions: dict[str, tuple[str, str]], reported: dict[str, list[str]] | None = None) -> str:
    """The cursor: positions per collection, plus the latest tick's problems (if any) under "reported"."""
    data: dict[str, Any] = {"v": CURSOR_VERSION, "collections": {c: list(p) for c, p in sorted(positions.items())}}
    if reported:
        data["reported"] = {c: lines[:CURSOR_REPORTED] for c, lines in sorted(reported.items())}
    return json.dumps(data, sort_keys=True)


def cursor_reports(text: str | None) -> dict[str, list[str]]:
    """{collection: problem lines} the tick that wrote this cursor reported (skipped items, loops)."""
    return dict(json.loads(text).get("reported", {})) if text else {}


def poll_new_items(
    collections: list[CollectionConfig],
    stac_source: StacSourceResource,
    cursor: dict[str, tuple[str, str]],
    instance=None,
    reports: dict[str, list[str]] | None = None,
    partitions_per_run: int = 1,
    storage: Storage | None = None,
) -> tuple[list[RunRequest], list[str], dict[str, tuple[str, str]], dict[str, Any]]:
    """(run requests, new partition keys, new cursor, per-collection counts) of one tick; what each
    collection's poll skipped or stopped on goes to `reports` ({collection: lines}).

    At most `stac_source.max_items_per_tick` items per collection, oldest `updated` first; the
    partition keys that `instance` already has are left out of the new ones (one query for all of
    the tick's keys). Without an instance every key counts as new (Dagster skips existing ones).
    Runs cover up to `partitions_per_run` items each (see :mod:`.batching`).
    With `storage`, a collection whose item set is stored is polled without its selection rule and the
    polled items join the set incrementally (`index.item_sets.admit_polled`: a better item evicts the
    one it replaces in its tile-quarter; no search of the whole collection per tick); only the items
    selected are indexed.
    """
    reports = reports if reports is not None else {}
    source = stac_source.source()
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    new_cursor = dict(cursor)
    found: list[PolledItem] = []
    counts: dict[str, Any] = {}
    for config in collections:
        if time.monotonic() > deadline:
            counts[config.collection] = "deferred to the next tick"
            continue
        report = SourceReport()
        incremental = _has_item_set(storage, config.collection, reports)
        params = config.search
        if incremental and params.selection != SELECTION_ALL:
            params = dataclasses.replace(params, selection=SELECTION_ALL, max_items=None)
        polled = source.poll(config.collection, params, after=cursor.get(config.collection),
                             limit=stac_source.max_items_per_tick, report=report, deadline=deadline)
        admitted = (admit_polled(storage, source, config.collection, polled, params=config.search)
                    if incremental and storage is not None else None)
        if report:
            reports[config.collection] = report.lines(CURSOR_REPORTED)
        selected = admitted[0] if admitted is not None else polled
        found += selected
        if polled:
            new_cursor[config.collection] = polled[-1].position
        counts[config.collection] = len(selected)
    keys = [item_partition_key(item.collection, item.item_id) for item in found]
    existing = existing_partitions(instance, keys) if instance is not None and keys else set()
    new_partitions = list(dict.fromkeys(k for k in keys if k not in existing))
    order = _partition_order(instance, existing) if len(existing) > 1 and partitions_per_run > 1 else {}
    runs = plan_runs(found, existing, partitions_per_run, order)
    return runs, new_partitions, new_cursor, counts


def _partition_order(instance, keys: set[str]) -> dict[str, int]:
    """{key: place in the partitions' order} of existing `keys` (one listing of the partitions): updated
    items are batched only where they lie next to each other in that order."""
    return {k: n for n, k in enumerate(instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) if k in keys}


def existing_partitions(instance, keys: list[str]) -> set[str]:
    """Which of `keys` are chip_index partitions already: one bounded query (chunked `IN`) where the
    instance offers it, else one listing of the partitions."""
    lookup = getattr(instance, "get_existing_dynamic_partitions", None)
    if lookup is not None:
        return set(lookup(ITEM_PARTITIONS_NAME, keys))
    return set(instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) & set(keys)


def _has_item_set(storage: Storage | None, collection: str, reports: dict[str, list[str]]) -> bool:
    """Whether `collection` has a stored item set (then it is polled incrementally). Storage that cannot
    be read is no reason to fail the tick: the collection is polled with its rule, the problem is
    reported, and the runs then name it (a chip_index run needs that storage anyway)."""
    if storage is None:
        return False
    try:
        return storage.exists(storage.item_set_key(collection))
    except StacchipError as exc:
        reports.setdefault(collection, []).append(f"item set not read, polled with its rule: {exc}"[:500])
        return False


def item_set_storage(storage: StorageResource | None) -> Storage | None:
    """The storage of the item sets, from the code location's `storage` resource (bound when the
    definitions are built: declaring it as a sensor resource would change the sensor's signature);
    None if it cannot be opened (the collections then poll as before, with their rule)."""
    if storage is None:
        return None
    try:
        return storage.process_config_and_initialize().storage()
    except Exception:  # noqa: BLE001 - no storage configured: no incremental item sets
        return None


def build_sensors(collections: list[CollectionConfig], chip_index_job, settings: Settings | None = None,
                  storage: StorageResource | None = None):
    """The item sensor; its runs cover up to STACCHIP_BACKFILL_PARTITIONS_PER_RUN items (`settings`)."""
    settings = load_settings() if settings is None else settings
    per_run = settings.backfill_partitions_per_run

    @sensor(
        name="stac_item_sensor",
        job=chip_index_job,
        minimum_interval_seconds=sensor_interval_seconds(settings),
        default_status=DefaultSensorStatus.RUNNING,
        description="Polls each configured collection for items updated after the cursor; adds their "
        "chip_index partitions in one request and requests runs of up to "
        f"{per_run} items (STACCHIP_BACKFILL_PARTITIONS_PER_RUN), one run key per set of item versions.",
    )
    def stac_item_sensor(context: SensorEvaluationContext, stac_source: StacSourceResource) -> SensorResult:
        cursor = parse_cursor(context.cursor)
        started = time.monotonic()
        reports: dict[str, list[str]] = {}
        try:
            runs, partitions, new_cursor, counts = poll_new_items(collections, stac_source, cursor, context.instance,
                                                                  reports, per_run, item_set_storage(storage))
        except StacchipError as exc:  # fail the tick; the cursor is not moved
            raise type(exc)(f"polling {stac_source.describe()} failed, cursor kept: {exc}") from exc
        horizon = canonical(dt.datetime.now(dt.timezone.utc) + FUTURE_TOLERANCE)
        for collection, (updated, item_id) in cursor.items():
            if updated > horizon:  # written before times were checked: items updated before it are missed
                reports.setdefault(collection, []).append(
                    f"the cursor ({updated}, {item_id}) lies in the future: items updated before it are not "
                    "polled; reset the sensor's cursor")
        for collection, lines in reports.items():
            context.log.warning("%s: %s", collection, "; ".join(lines))
        context.log.info("new or updated items per collection: %s (%d new partitions, %d runs, %.1f s)", counts,
                         len(partitions), len(runs), time.monotonic() - started)
        requests = partition_requests(ITEM_PARTITIONS_NAME, partitions)
        next_cursor = dump_cursor(new_cursor, reports)
        if not runs:
            problems = f"; reported: {json.dumps(reports)[:2000]}" if reports else ""
            return SensorResult(skip_reason=f"no new items ({counts}){problems}", cursor=next_cursor)
        return SensorResult(run_requests=runs, dynamic_partitions_requests=requests, cursor=next_cursor)

    return stac_item_sensor
