"""The S3 server dies in the middle of a run: the run fails saying which item and why, nothing
half-written is left in the bucket, and after the server is back a re-run ends equal to a clean run.

The whole graph (stac_items, chip_index, combined_index) of the code location
``stacchip_assets.definitions:defs`` on the embedded sample catalog, its storage base on SeaweedFS
(SigV4) through the code location's environment variables, runs launched by a child process on a
real on-disk Dagster instance (as in tests/e2e/test_faults_dagster.py). SeaweedFS is SIGKILLed (its whole
process group) while chip_index runs are in progress, then restarted on the same data folder and port.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.io.storage import Storage

from tests.conftest import PROJECT, require_servers
from tests.e2e.test_faults_dagster import CLEARED
from tests.support.dagster_support import ALL_KEYS, Graph
from tests.support.servers import RestartableSeaweedFS

BUCKET = "stacchip-outage"

WORKER = textwrap.dedent(
    """
    import sys
    from dagster import DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("stacchip_assets.definitions", "defs")
    jobs = {name: repo.get_reconstructable_job(name) for name in ("stac_items_job", "chip_index_job", "combined_index_job")}
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    collections, keys = sys.argv[1].split(","), sys.argv[2].split(",")
    runs = [("stac_items_job", c) for c in collections] + [("chip_index_job", k) for k in keys] + [("combined_index_job", None)]
    with DagsterInstance.get() as instance:
        for job, partition in runs:
            print("start", job, partition, flush=True)
            tags = {"dagster/partition": partition} if partition else {}
            result = execute_job(jobs[job], instance=instance, tags=tags, run_config=quiet)
            print("run", result.run_id, job, partition, result.success, flush=True)
            if not result.success:
                break  # the storage is gone: stop at the first failed run
    print("done", flush=True)
    """
)


def bucket_objects(client) -> dict[str, bytes]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    return {key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def assert_all_whole(objects: dict[str, bytes]) -> dict[str, int]:
    """Every object under the base is whole: parquet readable (key -> rows), JSON parses, PNG complete."""
    rows = {}
    for key, data in objects.items():
        # no temporaries on S3 (one PUT per object); `_` names are the combined index's own metadata
        # (its journal, the compacted tier), whole like the rest
        assert not key.endswith(".tmp") and not any(part.startswith(".") for part in key.split("/")), \
            f"a temporary object is visible: {key}"
        if key.endswith(".parquet"):
            rows[key] = pq.read_table(io.BytesIO(data)).num_rows
        elif key.endswith(".json"):
            json.loads(data)
        elif key.endswith(".png"):
            assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), key
    return rows


@pytest.fixture(scope="module")
def clean(sample_catalog, tmp_path_factory):
    """The same graph on a local base, in process: rows per item file, the combined chip ids."""
    base = tmp_path_factory.mktemp("s3-clean") / "base"
    with dg.instance_for_test() as instance:
        graph = Graph(sample_catalog, base, instance)
        graph.add_partitions()
        for key in ALL_KEYS:
            assert graph.index(key).success
        graph.combine()
    table = CombinedIndex(Storage(str(base))).read(columns=["collection", "chipid"])
    ids = sorted(f"{c}/{i}" for c, i in zip(table["collection"].to_pylist(), table["chipid"].to_pylist()))
    rows = {str(p.relative_to(base)): pq.read_metadata(p).num_rows for p in base.rglob("*.parquet")
            if not any(part.startswith(".") for part in p.relative_to(base).parts)}
    return rows, ids


def test_s3_server_killed_mid_run_fails_clearly_leaves_whole_objects_and_a_rerun_catches_up(sample_catalog, clean, tmp_path):
    require_servers("s3")
    clean_rows, clean_ids = clean
    weed_dir = Path(tempfile.mkdtemp(prefix="stacchip-weed-outage-"))
    weed = RestartableSeaweedFS(weed_dir / "data")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT / "dagster.yaml", home / "dagster.yaml")
    try:
        s3 = weed.start()
        s3.client().create_bucket(Bucket=BUCKET)
        env = dict(__import__("os").environ, DAGSTER_HOME=str(home), STACCHIP_SAMPLE_DIR=str(sample_catalog.parent))
        env.update({name: "" for name in CLEARED})
        env.update(STACCHIP_STORAGE_BASE=f"s3://{BUCKET}/base", STACCHIP_S3_ENDPOINT_URL=s3.endpoint,
                   STACCHIP_S3_REGION=s3.region, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        env.pop("DAGSTER_IS_DEV_CLI", None)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, ALL_KEYS)
        args = [sys.executable, "-c", WORKER, ",".join(SAMPLE_COLLECTIONS), ",".join(ALL_KEYS)]

        # 1. the graph runs; SeaweedFS is killed as the 4th chip_index run starts
        worker = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = ALL_KEYS[3]
        lines = []
        for line in worker.stdout:
            lines.append(line.strip())
            if line.strip() == f"start chip_index_job {victim}":
                # the run is starting: it reads the item and its COGs locally, then finds S3 gone when it
                # writes (a fixed delay here raced with fast runs, which finished before the kill)
                weed.kill()
                break
        out, err = worker.communicate(timeout=600)
        lines += out.splitlines()
        runs = [line.split() for line in lines if line.startswith("run ")]
        succeeded = [partition for _, _, job, partition, ok in runs if ok == "True"]
        failed = [(run_id, job, partition) for run_id, job, partition, ok in (r[1:] for r in runs) if ok != "True"]
        assert worker.returncode == 0, err[-3000:]
        assert len(failed) == 1, lines
        failed_run_id, failed_job, failed_partition = failed[0]
        assert (failed_job, failed_partition) == ("chip_index_job", victim), lines  # the run in progress

        # the failure is a StorageError-based Dagster failure naming the item, the object and the cause
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = instance.get_run_by_id(failed_run_id)
            assert run.status == dg.DagsterRunStatus.FAILURE
            failures = [e.dagster_event.event_specific_data for e in instance.all_logs(failed_run_id)
                        if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
            retries = [e for e in instance.all_logs(failed_run_id)
                       if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
        collection, item_id = victim.split("/")
        assert len(failures) == 1
        # Dagster's step failure says "Exceeded max_retries of 2" (the asset's RetryPolicy tried twice
        # more); the failure the UI shows under it is ours, with the exception chain as its cause
        failure = failures[0]
        causes, error = [], failure.error.cause
        while error is not None:
            causes.append(error.cls_name)
            error = error.cause
        message = failure.user_failure_data.description
        print(f"\n[s3 outage] {len(succeeded)} runs succeeded before the kill; the run of {victim} failed after "
              f"{len(retries)} Dagster retries: {failure.error.message.strip()!r}, causes {causes}:\n{message[:600]}")
        assert len(retries) == 2 and failure.error.message.strip() == "Exceeded max_retries of 2"
        assert causes[:2] == ["Failure", "StorageError"], causes
        assert f"indexing {collection}/{item_id}: StorageError: " in message, message
        assert f"s3://{BUCKET}/base/" in message and item_id in message, message
        assert s3.endpoint in message or "127.0.0.1" in message, message
        assert any(word in message.lower() for word in ("connect", "refused", "unreachable", "not reachable")), message
        assert s3.secret_key not in message

        # 2. SeaweedFS back on the same folder and port: every object under the base is whole, and the
        # item files of the runs that succeeded before the outage survived it
        weed.start()
        objects = bucket_objects(s3.client())
        rows = assert_all_whole(objects)
        for key in ALL_KEYS[:3]:
            c, i = key.split("/")
            assert rows[f"base/index/{c}/{i}/index_{i}.parquet"] == clean_rows[f"index/{c}/{i}/index_{i}.parquet"]
        for key, count in rows.items():
            assert count == clean_rows[key.removeprefix("base/")], key
        assert not any(k.startswith("base/combined/") for k in objects)  # the combined run never started

        # 3. the re-run (the whole graph again) succeeds and ends equal to the clean run
        rerun = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        results = [line.split() for line in rerun.stdout.splitlines() if line.startswith("run ")]
        assert len(results) == len(SAMPLE_COLLECTIONS) + len(ALL_KEYS) + 1 and all(r[-1] == "True" for r in results), rerun.stdout
        objects = bucket_objects(s3.client())
        rows = assert_all_whole(objects)
        assert {k.removeprefix("base/"): v for k, v in rows.items()} == clean_rows
        store = Storage.from_uri(f"s3://{BUCKET}/base", endpoint_url=s3.endpoint, region=s3.region,
                                 access_key_id=s3.access_key, secret_access_key=s3.secret_key)
        table = CombinedIndex(store).read(columns=["collection", "chipid"])
        ids = sorted(f"{c}/{i}" for c, i in zip(table["collection"].to_pylist(), table["chipid"].to_pylist()))
        assert ids == clean_ids and len(set(ids)) == len(ids)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            later = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": victim}))
            assert [r.status for r in reversed(later)] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]
    finally:
        weed.stop()
        shutil.rmtree(weed_dir, ignore_errors=True)
