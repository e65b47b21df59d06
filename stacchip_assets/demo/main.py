"""The main job: index the configured STAC source end to end in a persistent Dagster home.

    python -m stacchip_assets.demo.main            # sample catalog, DAGSTER_HOME=./.dagster_home

does what the running code location does over time, in one go and in process:

1. materializes every ``stac_items`` partition (one per configured collection);
2. polls the source exactly like ``stac_item_sensor`` (same function), adds the new ``chip_index``
   partitions and runs one ``chip_index_job`` per new or updated item, tagged with the sensor's name
   and run key so the sensor of a later ``dagster dev`` does not index them again;
3. runs ``combined_index_job`` (the incremental combine and its checks);

then prints a short summary. Run it again and only what changed is redone. Afterwards
``cd .dagster_home && DAGSTER_HOME=$PWD dg dev -w ../workspace.yaml`` shows the materializations,
their metadata and the lineage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from stacchip_assets.io.atomic import atomic_write_bytes

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SENSOR_NAME = "stac_item_sensor"

MINIMAL_DAGSTER_YAML = """\
# Written by python -m stacchip_assets.demo.main (the project's dagster.yaml was not found).
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: stacchip/role
        value: combine
        limit: 1
"""


def prepare_home(home: str | os.PathLike | None) -> Path:
    """The Dagster home (created), with a dagster.yaml (the project's if found)."""
    path = Path(home or os.environ.get("DAGSTER_HOME") or ".dagster_home").expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    target = path / "dagster.yaml"
    if not target.exists():
        for candidate in (Path.cwd() / "dagster.yaml", Path(__file__).resolve().parents[1] / "dagster.yaml"):
            if candidate.is_file() and candidate.resolve() != target.resolve():
                atomic_write_bytes(target, candidate.read_bytes())  # no half-written dagster.yaml
                break
        else:
            atomic_write_bytes(target, MINIMAL_DAGSTER_YAML.encode())
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def _metadata_value(event: Any, name: str, default: object) -> object:
    """The value of metadata entry `name` of a materialization event (an EventLogEntry or None)."""
    materialization = event.asset_materialization if event is not None else None
    if materialization is None or name not in materialization.metadata:
        return default
    return materialization.metadata[name].value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stacchip_assets.demo.main", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--home", help="Dagster home (default: $DAGSTER_HOME or ./.dagster_home)")
    parser.add_argument("--catalog", help="static STAC catalog.json (default: $STACCHIP_STAC_CATALOG or the sample)")
    parser.add_argument("--api", help="STAC API URL instead of a static catalog (default: $STACCHIP_STAC_API_URL)")
    parser.add_argument("--storage", help="storage base (default: $STACCHIP_STORAGE_BASE or $DAGSTER_HOME/stacchip)")
    return parser.parse_args(argv)


def _apply_args(args: argparse.Namespace) -> None:
    """The command line's choices, as the environment variables the code location's settings read."""
    if args.catalog:
        os.environ["STACCHIP_STAC_CATALOG"] = str(Path(args.catalog).absolute())
    if args.api:
        os.environ["STACCHIP_STAC_API_URL"] = args.api
    if args.storage:
        os.environ["STACCHIP_STORAGE_BASE"] = args.storage


def _materialize_item_sets(defs: Any, collections: list, instance: Any, failures: list[str]) -> int:
    """1. the stac_items partitions; returns how many items the sets hold."""
    stac_items_job = defs.resolve_job_def("stac_items_job")
    selected = 0
    for config in collections:
        result = stac_items_job.execute_in_process(
            partition_key=config.collection, instance=instance, run_config=QUIET_RUN_CONFIG, raise_on_error=False
        )
        if not result.success:
            failures.append(f"stac_items[{config.collection}]")
            continue
        event = instance.get_latest_materialization_event(defs.get_assets_def("stac_items").key)
        selected += int(cast(int, _metadata_value(event, "count", 0)))
    return selected


def _index_items(defs: Any, runs: list, instance: Any, failures: list[str]) -> tuple[int, int]:
    """2. the chip_index runs the sensor would request, skipping run keys already done; (indexed, skipped)."""
    from dagster import DagsterRunStatus, RunsFilter

    chip_index_job = defs.resolve_job_def("chip_index_job")
    indexed = skipped = 0
    for request in runs:
        run_key = request.run_key
        assert run_key is not None, "poll_new_items gives every request a run key"
        done = instance.get_runs(
            filters=RunsFilter(tags={"dagster/sensor_name": SENSOR_NAME, "dagster/run_key": run_key},
                               statuses=[DagsterRunStatus.SUCCESS]),
            limit=1,
        )
        if done:
            skipped += 1
            continue
        tags = {**request.tags, "dagster/sensor_name": SENSOR_NAME, "dagster/run_key": run_key}
        result = chip_index_job.execute_in_process(
            partition_key=request.partition_key, instance=instance, tags=tags, run_config=QUIET_RUN_CONFIG,
            raise_on_error=False,
        )
        if result.success:
            indexed += 1
        else:
            failures.append(f"chip_index[{request.partition_key}]")
    return indexed, skipped


def _combine(defs: Any, instance: Any, failures: list[str]) -> tuple[list[str], dict, dict]:
    """3. the combined index and its checks; (failed checks, state, changes) of its materialization."""
    from stacchip_assets.dagster_defs import COMBINED_INDEX_KEY

    result = defs.resolve_job_def("combined_index_job").execute_in_process(
        instance=instance, run_config=QUIET_RUN_CONFIG, raise_on_error=False
    )
    if not result.success:
        failures.append("combined_index")
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    event = instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    state = dict(cast(dict, _metadata_value(event, "state", {})))
    changes = dict(cast(dict, _metadata_value(event, "changes", {})))
    return failed_checks, state, changes


def run(argv: Sequence[str] | None = None) -> int:
    """Materialize the whole graph on the configured source (default: the sample catalog), print a summary."""
    args = _parse_args(argv)
    started = time.monotonic()
    home = prepare_home(args.home)
    _apply_args(args)

    # imported after DAGSTER_HOME and the environment are set: resources bind to them
    from dagster import DagsterInstance

    from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME, build_definitions, load_collections
    from stacchip_assets.dagster_defs.sensors import poll_new_items
    from stacchip_assets.index.combined import CombinedIndex

    collections = load_collections()
    defs = build_definitions(collections)
    # resources bound to environment variables, resolved as a run would resolve them
    resources = defs.resources or {}  # build_definitions always binds both
    stac_source = resources["stac_source"].process_config_and_initialize()
    storage = resources["storage"].process_config_and_initialize().storage()
    print(f"stacchip-assets: {len(collections)} collections from {stac_source.describe()}; Dagster home {home}")

    failures: list[str] = []
    with DagsterInstance.get() as instance:
        selected = _materialize_item_sets(defs, collections, instance, failures)
        runs, new_partitions, _cursor, _counts = poll_new_items(collections, stac_source, {}, instance,
                                                                 storage=storage)
        if new_partitions:
            instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, new_partitions)
        indexed, skipped = _index_items(defs, runs, instance, failures)
        failed_checks, state, changes = _combine(defs, instance, failures)

    elapsed = time.monotonic() - started
    print_item_sets(selected, len(runs), indexed, skipped, changes)
    for collection, totals in sorted(state.get("by_collection", {}).items()):
        print(f"  {collection:<20} {totals['items']:>4} items {totals['rows']:>7} chips")
    print(f"chips: {state.get('rows', 0)} in the combined index ({state.get('items', 0)} items)")
    print(f"combined index: {CombinedIndex(storage).uri}")
    print(f"read it: geopandas.read_parquet({CombinedIndex(storage).uri!r}); "
          "pixels: stacchip_assets.index.reader.read_chip(row)")
    print_locations(home, stac_source, storage)
    if failed_checks:
        print(f"failed checks: {', '.join(failed_checks)}")
    if failures:
        print(f"FAILED: {', '.join(failures)}")
    workspace = Path.cwd() / "workspace.yaml"  # the repository's, when run from its root as the README says
    print(f"done in {elapsed:.1f} s; browse it: cd {home} && DAGSTER_HOME=$PWD dg dev -w "
          f"{workspace if workspace.exists() else 'workspace.yaml'}")
    return 1 if failures or failed_checks else 0


def print_item_sets(selected: int, polled: int, indexed: int, skipped: int, changes: dict) -> None:
    """The summary's item lines: the item sets (what the combined index holds, issue 17) and this run."""
    counts = changes.get("counts", {})
    print(f"items: {selected} in the configured item sets, which the combined index holds exactly (the chips of the "
          "items in the item sets, with the current chip settings)")
    print(f"  this run: {polled} items to index found by polling ({indexed} indexed now, {skipped} already indexed); "
          f"combined index: {counts.get('add', 0)} added, {counts.get('replace', 0)} replaced, "
          f"{counts.get('remove', 0)} removed, {counts.get('waiting', 0)} waiting for indexing")
    for line in changes.get("remove", [])[:10]:
        print(f"  removed {line}")


def source_location(stac_source) -> tuple[str, str]:
    """(what, where) of the resource's STAC source: the API, the static catalog or the sample catalog."""
    if stac_source.api_url:
        return "STAC API", stac_source.api_url
    if stac_source.catalog_path:
        return "static catalog", stac_source.catalog_path
    from stacchip_assets.demo.sample_data import (
        ensure_sample_catalog,  # $STACCHIP_SAMPLE_DIR or $DAGSTER_HOME/stacchip_sample
    )

    return "sample catalog", str(ensure_sample_catalog())


def print_locations(home: Path, stac_source, storage) -> None:
    """Where the input and every output of the graph are (local paths or s3:// URIs)."""
    from stacchip_assets.dagster_defs.query import QUERIES_DIR
    from stacchip_assets.io.storage import COMBINED_DIR, INDEX_DIR, ITEM_FILENAME, ITEM_SETS_DIR

    what, where = source_location(stac_source)
    base = storage.uri().rstrip("/")
    rows = [
        (what, where),
        ("Dagster home", f"{home} (instance: runs, events, materializations)"),
        ("storage base", base),
        ("item sets", f"{base}/{ITEM_SETS_DIR}/{{collection}}.json"),
        ("stored items", f"{base}/{{collection}}/{{item_id}}/{ITEM_FILENAME}"),
        ("chip indexes", f"{base}/{INDEX_DIR}/{{collection}}/{{item_id}}/index_{{item_id}}.parquet"),
        ("quicklooks", f"{base}/{INDEX_DIR}/{{collection}}/{{item_id}}/quicklook_{{item_id}}.png"),
        ("combined index", f"{base}/{COMBINED_DIR}/{{collection}}/{{item_id}}.parquet (compacted: {COMBINED_DIR}/_lsm/)"),
        ("training sets", f"{base}/training/{{name}}/ (training_job)"),
        ("chip queries", f"{base}/{QUERIES_DIR}/{{name}}.parquet (chip_query_job)"),
    ]
    print("where everything is:")
    for label, value in rows:
        print(f"  {label + ':':<16} {value}")


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
