"""chip_index over many partitions in one run (batched backfill, ``BackfillPolicy.multi_run``).

Each partition is reported as its own AssetMaterialization (its own data version and Dagster's
provenance tags) with its own check results; one failing item does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterEventType,
    Failure,
    MetadataValue,
    Output,
)

from stacchip_assets.dagster_defs.assets.common import (
    CHIP_INDEX_CODE_VERSION,
    CHIP_INDEX_KEY,
    failure,
    split_item_partition_key,
)
from stacchip_assets.dagster_defs.assets.metadata import chip_index_metadata
from stacchip_assets.dagster_defs.dagster_internals import check_target, provenance_tags
from stacchip_assets.index.item_index import ItemIndexResult


def _provenance_tags(context: AssetExecutionContext) -> dict[str, str]:
    """The tags Dagster puts on an output's materialization (code version, the input data versions
    and event pointers of the upstream assets), without the data version: a batch reports each
    partition as its own AssetMaterialization with its own data version, which the output path
    cannot do (one data version per output). Built with Dagster's own (private) helpers in `dagster_internals`, so the UI's
    staleness of a batch-materialized partition is the same as after a single-partition run."""
    return provenance_tags(context, CHIP_INDEX_KEY, CHIP_INDEX_CODE_VERSION)


def _materialized_in_run(context: AssetExecutionContext) -> set[str]:
    """chip_index partitions this run has already materialized (a retried step skips them)."""
    done: set[str] = set()
    for entry in context.instance.all_logs(context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is not None and event.asset_key == CHIP_INDEX_KEY and event.partition:
            done.add(event.partition)
    return done


def _target(context: AssetExecutionContext, key: str):
    """The materialization a check result of partition `key` refers to (the one this run just logged)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=CHIP_INDEX_KEY, asset_partitions=[key]), limit=1
    ).records
    if not records or records[0].run_id != context.run.run_id:
        return None
    return check_target(records[0].storage_id, records[0].run_id, records[0].timestamp)


def _report_partition(context: AssetExecutionContext, key: str, result: ItemIndexResult, source: str,
                      tags: dict[str, str], image_url_prefix: str | None = None) -> Iterator[Any]:
    """The materialization of one partition of the batch, then its check results (targeting it)."""
    yield AssetMaterialization(
        asset_key=CHIP_INDEX_KEY, partition=key, metadata=chip_index_metadata(result, source, image_url_prefix),
        tags={**tags, "dagster/data_version": result.content_hash},
    )
    target = _target(context, key)
    for outcome in result.checks:
        yield AssetCheckEvaluation(
            asset_key=CHIP_INDEX_KEY, check_name=outcome.name, passed=outcome.passed, metadata=outcome.metadata,
            description=outcome.description, severity=AssetCheckSeverity.ERROR, blocking=False, partition=key,
            target_materialization_data=target,
        )


def _batch_failure(keys: list[str], failures: dict[str, Failure]) -> Failure:
    """One Failure naming every failed item; retried only if one of them may be transient."""
    listing = "; ".join(f"{k}: {f.description}" for k, f in failures.items())
    return Failure(
        description=f"{len(failures)} of {len(keys)} items failed (the other {len(keys) - len(failures)} are "
        f"materialized; re-run the failed partitions only): {listing}",
        metadata={
            "failed_partitions": MetadataValue.json(sorted(failures)),
            "materialized_partitions": MetadataValue.int(len(keys) - len(failures)),
            "errors": MetadataValue.json({k: f.description for k, f in failures.items()}),
        },
        allow_retries=any(f.allow_retries for f in failures.values()),
    )


def index_batch(context: AssetExecutionContext, keys: list[str], index_one: Callable[[str], ItemIndexResult],
                source: str, image_url_prefix: str | None = None) -> Iterator[Any]:
    """Index the partitions of a backfill run one by one and report each as it is done.

    Every partition that indexes gets its own materialization (its metadata, its data version = the
    hash of its index, Dagster's provenance tags) and its own check results, logged as events right
    away. A failing item does not stop the batch: the others are indexed, then the step fails with a
    `Failure` that names every failed item and its error. Dagster's asset backfill counts the
    partitions a failed ranged run did materialize and marks only the rest failed, so re-executing
    the backfill's failed partitions redoes only those. A step retry (RetryPolicy, only when a
    failure may be transient) skips the partitions this run already materialized.
    """
    done = _materialized_in_run(context) if context.retry_number > 0 else set()
    if done:
        context.log.info("retry %d: %d of %d partitions already materialized by this run, skipped",
                         context.retry_number, len(done & set(keys)), len(keys))
    tags = _provenance_tags(context)
    failures: dict[str, Failure] = {}
    indexed = chips = 0
    for key in keys:
        if key in done:
            continue
        collection, item_id = split_item_partition_key(key)
        try:
            result = index_one(key)
        except Exception as exc:  # noqa: BLE001 (one broken item must not stop the other 99; reported below)
            failures[key] = failure(exc, f"indexing {collection}/{item_id}")
            context.log.error("%s failed: %s", key, failures[key].description)
            continue
        indexed += 1
        chips += result.chips_kept
        yield from _report_partition(context, key, result, source, tags, image_url_prefix)
    context.log.info("batch of %d partitions: %d indexed (%d chips), %d already done, %d failed",
                     len(keys), indexed, chips, len(done & set(keys)), len(failures))
    for output_name in context.assets_def.check_specs_by_output_name:  # the checks' (Nothing) outputs
        yield Output(None, output_name=output_name)
    if failures:
        raise _batch_failure(keys, failures)
