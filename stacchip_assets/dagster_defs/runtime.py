"""How long a run may take before run monitoring cancels it (`dagster/max_runtime`, seconds).

With run monitoring on (dagster.yaml), the daemon cancels a run that has been STARTED for longer than
its `dagster/max_runtime` run tag (or the instance's `max_runtime_seconds` when it has none), so a run
whose process died (kill -9, a lost machine) does not hold its queue slot for good.

Jobs carry the tag (`chip_index_job`, `combined_index_job`), so runs a sensor requests have it from
the start. Runs launched from the UI's Materialize button, a backfill or `dg launch --assets` are runs
of Dagster's implicit asset job `__ASSET_JOB`, whose run tags are only those of the launch: Dagster
1.13 does not turn asset `tags` or `op_tags` into run tags. So the chip_index asset gives its own run
the same limit when the run carries none and materializes chip_index alone (`protect_run`). Run
monitoring reads the run's tags at every poll and measures from the run's start, so the limit is the
same; until the step starts, the instance default applies.
"""

from __future__ import annotations

from dagster import MAX_RUNTIME_SECONDS_TAG, AssetExecutionContext, AssetKey

#: chip_index runs: one item (or a backfill batch of STACCHIP_BACKFILL_PARTITIONS_PER_RUN items).
CHIP_INDEX_MAX_RUNTIME_SECONDS = 3600
#: combined_index runs: copying every changed item and compacting.
COMBINED_INDEX_MAX_RUNTIME_SECONDS = 21600

#: The legacy spelling run monitoring also honours.
_LEGACY_TAG = "dagster/max_runtime_seconds"


def max_runtime_tags(seconds: int) -> dict[str, str]:
    """The run tag that bounds a run to `seconds` under run monitoring."""
    return {MAX_RUNTIME_SECONDS_TAG: str(int(seconds))}


def protect_run(context: AssetExecutionContext, asset_key: AssetKey, seconds: int) -> bool:
    """Tag the current run with `dagster/max_runtime` = `seconds` if it has no limit of its own and
    materializes `asset_key` alone (with its checks); returns True if it tagged the run.

    A run that also materializes other assets keeps the instance default: the limit of one asset
    must not cut short the others. An explicit limit (job tag, launchpad tag) always wins."""
    run = context.run
    if MAX_RUNTIME_SECONDS_TAG in run.tags or _LEGACY_TAG in run.tags:
        return False
    selection = run.asset_selection
    if selection is None:  # the whole job: only ours if the job materializes nothing else
        selection = frozenset(context.job_def.asset_layer.selected_asset_keys)
    if set(selection) != {asset_key}:
        return False
    context.instance.add_run_tags(run.run_id, max_runtime_tags(seconds))
    context.log.info(
        "run of %s for %s alone: run monitoring limit dagster/max_runtime=%d s, as for its job's runs",
        run.job_name, asset_key.to_user_string(), seconds,
    )
    return True
