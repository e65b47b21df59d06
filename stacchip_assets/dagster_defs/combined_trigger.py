"""What keeps the combined index caught up: the `combined_index_trigger` sensor and the
`all_indexed_items_combined` check.

Why not an automation condition (issue 16). The former condition (eager, tolerant of missing and
in-progress items) left the combined index at 115 of 120 items for good. Cause, reproduced in process
with Dagster 1.13: ``since_last_handled()`` keeps "a dependency was updated" true until it is reset by
the asset being requested or *updated*. When one evaluation sees both the combined index's own new
materialization and the chip indexes that finished after that run had read the event log, the reset
wins: `SinceCondition` only orders trigger and reset by time when both carry timing metadata, and the
`|` of ``(newly_missing | any_deps_updated)`` and of the reset drops it. Nothing else updates
afterwards, so the condition stays false. Even with timing, an item materialized after the combined
run *read* the event log but before it *logged* its materialization counts as handled. Event timing
cannot tell which items a run included; the run's recorded cursor can.

The decision here is made from that fact. The combined run records ``state.event_cursor`` in its
materialization metadata (the storage id of the last chip_index materialization it included, see
`assets.update_combined_index`). Every tick (`STACCHIP_COMBINED_INTERVAL_SECONDS`, default 30 s):

- latest chip_index materialization storage id ``L`` <= cursor ``C``: up to date, nothing to do;
- else, a combined run is already queued or in progress (a run of `combined_index_job`, tagged
  ``stacchip/role=combine``, or the run that last planned to materialize `combined_index`, e.g. one
  launched from the UI): nothing to request. A queued run reads the event log when it starts, so it
  includes ``L``; a running one may not, and is followed by the next tick after it ends;
- else: request one `combined_index_job` run.

Liveness: every run ends (run monitoring cancels one past its `dagster/max_runtime`); at the first tick
with no active run and ``L > C`` a run is requested, and that run starts after ``L`` was logged, so its
cursor becomes >= ``L`` unless it fails, in which case the next tick requests another. So a chip_index
materialization waits at most for the run in progress, one interval and one combined run. Only this
sensor requests combined runs, one at a time: no flood during a large ingest (at most one combined run
queued or running; the run queue's `stacchip/role=combine` limit in dagster.yaml still holds for any
run of the job, however launched). A plain sensor rather than a custom `AutomationCondition`: the
decision needs the cursor in the materialization metadata and the run queue, which conditions do not
see, and a sensor's skip reasons say in the UI why it did nothing.

The check ``all_indexed_items_combined`` (on `combined_index`) counts the chip_index partitions with a
materialization after the cursor (new or updated items the combined index has not included) and the
time of the oldest such materialization; it fails while any exist. The sensor evaluates it every tick
and reports it to the instance whenever what it says changes (`SensorResult.asset_events`), so the UI
shows the state at most one interval old, also while combined runs fail. It is left out of
`combined_index_job`: a run that planned it and then failed would make its latest execution one
without a result. It can still be executed by hand (it only reads the event log).
"""

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    asset_check,
    sensor,
)

from stacchip_assets.dagster_defs.assets import CHIP_INDEX_KEY, COMBINED_INDEX_KEY, STAC_ITEMS_KEY
from stacchip_assets.io.settings import COMBINED_INTERVAL_ENV, Settings, load_settings

#: Seconds between two evaluations of the combined trigger (environment variable, default 30).
CHECK_NAME = "all_indexed_items_combined"
CHECK_KEY = AssetCheckKey(COMBINED_INDEX_KEY, CHECK_NAME)
SENSOR_NAME = "combined_index_trigger"
#: Statuses of a run that has not ended (queued runs have not read the event log yet).
ACTIVE_STATUSES = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
                   DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
#: Item keys listed in the check's metadata (the count is exact).
LISTED = 50


def combined_interval_seconds(settings: Settings | None = None) -> int:
    """`STACCHIP_COMBINED_INTERVAL_SECONDS` (default 30), from `io.settings`, read when the code location loads."""
    return (load_settings() if settings is None else settings).combined_interval_seconds


@dataclass(frozen=True)
class Backlog:
    """Chip-index materializations the latest combined materialization has not included."""

    cursor: int | None  #: event_cursor of the latest combined materialization (None: never combined)
    latest: int | None  #: storage id of the newest chip_index materialization (None: none yet)
    items: tuple[str, ...]  #: partitions materialized after the cursor, sorted
    oldest_storage_id: int | None = None
    oldest_timestamp: float | None = None

    @property
    def behind(self) -> bool:
        return self.latest is not None and (self.cursor is None or self.latest > self.cursor)

    def oldest_utc(self) -> str:
        if self.oldest_timestamp is None:
            return ""
        return dt.datetime.fromtimestamp(self.oldest_timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def combined_cursor(instance: DagsterInstance) -> int | None:
    """The event-log cursor the latest combined materialization recorded (None if none)."""
    event = instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    if event is None or event.asset_materialization is None:
        return None
    state = event.asset_materialization.metadata.get("state")
    cursor = _state_dict(state).get("event_cursor")
    return int(cursor) if cursor is not None else None


def backlog(instance: DagsterInstance) -> Backlog:
    """What the combined index lacks: three bounded queries (newest, oldest after the cursor, and the
    distinct partitions after it)."""
    cursor = combined_cursor(instance)
    newest = instance.fetch_materializations(AssetRecordsFilter(asset_key=CHIP_INDEX_KEY), limit=1).records
    latest = newest[0].storage_id if newest else None
    if latest is None or (cursor is not None and latest <= cursor):
        return Backlog(cursor, latest, ())
    oldest = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=CHIP_INDEX_KEY, after_storage_id=cursor), limit=1, ascending=True).records
    items = tuple(sorted(instance.get_materialized_partitions(CHIP_INDEX_KEY, after_cursor=cursor)))
    return Backlog(cursor, latest, items, oldest[0].storage_id if oldest else None,
                   oldest[0].timestamp if oldest else None)


def active_combined_runs(instance: DagsterInstance) -> list[str]:
    """Ids of combined runs not yet ended: runs tagged stacchip/role=combine, and the run that last
    planned a combined_index materialization (however it was launched)."""
    runs = instance.get_runs(RunsFilter(tags={"stacchip/role": "combine"}, statuses=ACTIVE_STATUSES), limit=10)
    ids = [r.run_id for r in runs]
    planned = instance.get_latest_planned_materialization_info(COMBINED_INDEX_KEY)
    if planned is not None and planned.run_id not in ids:
        run = instance.get_run_by_id(planned.run_id)
        if run is not None and run.status in ACTIVE_STATUSES:
            ids.append(run.run_id)
    return ids


def check_metadata(state: Backlog) -> dict[str, MetadataValue]:
    return {
        "missing_items": MetadataValue.int(len(state.items)),
        "missing_since": MetadataValue.text(state.oldest_utc()),
        "oldest_missing_storage_id": MetadataValue.int(state.oldest_storage_id or 0),
        "combined_event_cursor": MetadataValue.int(state.cursor if state.cursor is not None else -1),
        "latest_chip_index_storage_id": MetadataValue.int(state.latest if state.latest is not None else -1),
        "examples": MetadataValue.json(list(state.items[:LISTED])),
    }


def check_description(state: Backlog) -> str:
    if not state.items:
        return "every indexed item is in the combined index"
    return (f"{len(state.items)} indexed items (new or updated) not yet in the combined index, the oldest "
            f"materialized at {state.oldest_utc()}")


def check_evaluation(state: Backlog) -> AssetCheckEvaluation:
    """The check's result as an event the sensor reports to the instance."""
    return AssetCheckEvaluation(
        asset_key=COMBINED_INDEX_KEY, check_name=CHECK_NAME, passed=not state.items, metadata=check_metadata(state),
        severity=AssetCheckSeverity.ERROR, description=check_description(state),
    )


def _reported(instance: DagsterInstance) -> tuple[bool, int, int, int] | None:
    """(passed, missing, oldest storage id, cursor) of the check's latest evaluation, if any."""
    records = instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=1)
    event = records[0].event if records else None
    data = event.dagster_event.event_specific_data if event is not None and event.dagster_event else None
    if not isinstance(data, AssetCheckEvaluation):
        return None
    meta = data.metadata

    def number(key: str) -> int:
        value = meta.get(key)
        return int(cast(int, value.value)) if value is not None and value.value is not None else -2

    return data.passed, number("missing_items"), number("oldest_missing_storage_id"), number("combined_event_cursor")


def _signature(state: Backlog) -> tuple[bool, int, int, int]:
    return (not state.items, len(state.items), state.oldest_storage_id or 0,
            state.cursor if state.cursor is not None else -1)


def item_sets_changed(instance: DagsterInstance) -> bool:
    """Whether a stac_items materialization (an item set changed: items superseded, withdrawn, settings)
    is newer than the one the latest combined materialization applied (its ``state.item_sets_cursor``)."""
    newest = instance.fetch_materializations(AssetRecordsFilter(asset_key=STAC_ITEMS_KEY), limit=1).records
    if not newest:
        return False
    event = instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    state = event.asset_materialization.metadata.get("state") if event and event.asset_materialization else None
    applied = _state_dict(state).get("item_sets_cursor")
    return applied is None or newest[0].storage_id > int(applied)


def decide(instance: DagsterInstance) -> tuple[RunRequest | None, str, Backlog]:
    """(run request or None, why, backlog) of one tick. The backlog is read before the runs: a run
    found queued then has not read the event log yet, so it includes everything the backlog saw.
    A changed item set (issue 17) also needs a combined run, to apply its removals."""
    state = backlog(instance)
    sets_changed = item_sets_changed(instance)
    if not state.behind and not sets_changed:
        return None, f"up to date: the combined index includes every chip_index materialization (cursor {state.cursor})", state
    active = active_combined_runs(instance)
    if active:
        return None, (f"{len(state.items)} items not yet combined; combined run {active[0]} is queued or running "
                      "(the next tick after it ends requests another if it leaves any behind)"), state
    request = RunRequest(tags={"stacchip/role": "combine", "stacchip/combine_through": str(state.latest)})
    if not state.behind:
        return request, "an item set changed since the last combined run: one combined run", state
    return request, f"{len(state.items)} items not yet combined (since {state.oldest_utc()}): one combined run", state


def build_combined_trigger(combined_index_job, settings: Settings | None = None):
    """The sensor that requests `combined_index_job` runs (see the module docstring)."""

    @sensor(
        name=SENSOR_NAME,
        job=combined_index_job,
        minimum_interval_seconds=combined_interval_seconds(settings),
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests a combined_index run whenever a chip_index materialization is newer than the "
        "cursor the latest combined materialization recorded and no combined run is queued or running; "
        "reports the all_indexed_items_combined check.",
    )
    def combined_index_trigger(context: SensorEvaluationContext) -> SensorResult:
        request, reason, state = decide(context.instance)
        events = [check_evaluation(state)] if _reported(context.instance) != _signature(state) else []
        context.log.info(reason)
        if request is None:
            return SensorResult(skip_reason=reason, asset_events=events)
        return SensorResult(run_requests=[request], asset_events=events)

    return combined_index_trigger


@asset_check(asset=COMBINED_INDEX_KEY, name=CHECK_NAME, description="Every chip_index materialization is included "
             "in the combined index: fails while some indexed items (new or updated) are not, with how many and the "
             "time of the oldest. Evaluated and reported by the combined_index_trigger sensor every tick it changes.")
def all_indexed_items_combined(context: AssetCheckExecutionContext) -> AssetCheckResult:
    state = backlog(context.instance)
    return AssetCheckResult(passed=not state.items, metadata=check_metadata(state), description=check_description(state),
                            severity=AssetCheckSeverity.ERROR)


__all__ = ["CHECK_NAME", "COMBINED_INTERVAL_ENV", "SENSOR_NAME", "Backlog", "active_combined_runs", "all_indexed_items_combined",
           "backlog", "build_combined_trigger", "combined_cursor", "decide"]


def _state_dict(entry: Any) -> dict:
    """The `state` metadata entry of a combined materialization as a dict ({} when absent)."""
    return dict(cast(dict, entry.value)) if entry is not None and entry.value is not None else {}
