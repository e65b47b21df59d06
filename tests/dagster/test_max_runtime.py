"""chip_index runs get run monitoring's `dagster/max_runtime` however they are launched: by the sensor
(chip_index_job's tag), and from the UI, whose Materialize button and backfills launch Dagster's
implicit asset job `__ASSET_JOB` with only the launch's tags (the chip_index asset tags its own run).

In process: the implicit asset job run for the chip_index selection, as the UI creates it. Under
`dagster dev`: the exact GraphQL mutations the UI sends (launchPipelineExecution of `__ASSET_JOB` with an
asset selection and a partition tag; launchPartitionBackfill of several partitions), run by the
real daemon. That run monitoring cancels a run past this tag is tests/e2e/test_faults_dagster.py's test."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import CHIP_INDEX_KEY, COMBINED_INDEX_KEY, ITEM_PARTITIONS_NAME
from stacchip_assets.dagster_defs.assets import CHIP_INDEX_CHECKS

from tests.conftest import PROJECT, require_servers
from tests.support.dagster_support import ALL_KEYS, QUIET, Graph, copy_catalog

LIMIT = {"dagster/max_runtime": "3600"}


@pytest.fixture()
def graph(sample_catalog, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    g = Graph(copy_catalog(sample_catalog, tmp_path / "catalog"), tmp_path / "base", instance)
    g.add_partitions(ALL_KEYS[:3])
    return g


def run_tags(graph: Graph, result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return dict(graph.instance.get_run_by_id(result.run_id).tags)


def test_a_ui_run_of_the_implicit_asset_job_gets_chip_index_jobs_limit(graph):
    implicit = graph.defs.resolve_implicit_global_asset_job_def()
    assert implicit.name == "__ASSET_JOB" and "dagster/max_runtime" not in implicit.tags  # nothing from Dagster
    result = implicit.execute_in_process(asset_selection=[CHIP_INDEX_KEY], partition_key=ALL_KEYS[0],
                                         instance=graph.instance, run_config=QUIET)
    assert result.success
    tags = run_tags(graph, result)
    assert tags["dagster/max_runtime"] == LIMIT["dagster/max_runtime"]
    assert tags["dagster/partition"] == ALL_KEYS[0]
    # the same limit as the sensor's job
    assert graph.defs.resolve_job_def("chip_index_job").tags["dagster/max_runtime"] == tags["dagster/max_runtime"]


def test_an_explicit_limit_wins_and_a_run_of_more_assets_keeps_the_instance_default(graph):
    implicit = graph.defs.resolve_implicit_global_asset_job_def()
    own = implicit.execute_in_process(asset_selection=[CHIP_INDEX_KEY], partition_key=ALL_KEYS[1],
                                      instance=graph.instance, run_config=QUIET,
                                      tags={"dagster/max_runtime": "120"})  # e.g. set in the launchpad
    assert own.success and run_tags(graph, own)["dagster/max_runtime"] == "120"
    sensor_job = graph.defs.resolve_job_def("chip_index_job").execute_in_process(
        partition_key=ALL_KEYS[2], instance=graph.instance, run_config=QUIET)
    assert sensor_job.success and run_tags(graph, sensor_job)["dagster/max_runtime"] == "3600"
    # chip_index and combined_index in one run: chip_index's hour must not cut the combine short, so
    # the run keeps run monitoring's instance default (max_runtime_seconds in dagster.yaml)
    both = implicit.execute_in_process(asset_selection=[CHIP_INDEX_KEY, COMBINED_INDEX_KEY], partition_key=ALL_KEYS[0],
                                       instance=graph.instance, run_config=QUIET)
    assert both.success and "dagster/max_runtime" not in run_tags(graph, both)
    assert {m.asset_key for m in both.get_asset_materialization_events()} == {CHIP_INDEX_KEY, COMBINED_INDEX_KEY}


LAUNCH_AS_THE_UI = """mutation Launch($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message stack } ... on Error { message } } }"""
LAUNCH_BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } ... on Error { message } } }"""


@pytest.mark.e2e
def test_runs_launched_like_the_ui_under_dagster_dev_carry_the_limit(tmp_path):
    """Materialize of one partition and a backfill of three, through the webserver and the daemon."""
    require_servers("dagster")
    from tests.dagster.test_backfill import COLLECTIONS_YAML, item_grid, partition_keys, write_catalog
    from tests.support.servers import dagster_dev

    grid = item_grid(4)
    catalog = write_catalog(tmp_path / "catalog", grid)
    home = tmp_path / "home"
    home.mkdir()
    (home / "collections.yaml").write_text(COLLECTIONS_YAML)  # the sensor's search selects none of them
    env = {"STACCHIP_STAC_CATALOG": str(catalog), "STACCHIP_COLLECTIONS_FILE": str(home / "collections.yaml"),
           "STACCHIP_STORAGE_BASE": str(home / "stacchip"), "STACCHIP_STAC_API_URL": "", "STACCHIP_COLLECTIONS": "",
           "STACCHIP_S3_ENDPOINT_URL": ""}
    keys = partition_keys(grid)
    with dagster_dev(PROJECT, home, env=env) as server:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, keys)
        # "Materialize" of one partition on the chip_index asset page: the UI picks the asset's first
        # job, __ASSET_JOB, and sends only the partition tag
        launched = server.graphql(LAUNCH_AS_THE_UI, {"params": {
            "selector": {"repositoryLocationName": server.location, "repositoryName": "__repository__",
                         "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["chip_index"]}],
                         "assetCheckSelection": [{"assetKey": {"path": ["chip_index"]}, "name": name}
                                                 for name, _ in CHIP_INDEX_CHECKS]},  # the UI adds the asset's checks
            "mode": "default", "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": keys[0]}]},
        }})["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run = server.wait_for_run(run_id=launched["run"]["runId"], timeout=180)
        assert run["jobName"] == "__ASSET_JOB" and run["tags"]["dagster/partition"] == keys[0]
        assert run["tags"]["dagster/max_runtime"] == "3600", run["tags"]
        # "Materialize" of several partitions: a backfill, run by the daemon as runs of __ASSET_JOB
        backfill = server.graphql(LAUNCH_BACKFILL, {"params": {
            "partitionNames": keys[1:], "assetSelection": [{"path": ["chip_index"]}], "title": "from the UI"}}
        )["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = server.runs({"dagster/backfill": backfill["backfillId"]})
            if runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
                break
            time.sleep(1)
        assert runs and {r["status"] for r in runs} == {"SUCCESS"}, (runs, server.log_text()[-3000:])
        assert {r["jobName"] for r in runs} == {"__ASSET_JOB"}
        assert [r["tags"].get("dagster/max_runtime") for r in runs] == ["3600"] * len(runs)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_materialized_partitions(CHIP_INDEX_KEY) == set(keys)
