"""Issue 16: the combined index catches up with every indexed item on its own, under the real daemon.

One `dagster-daemon run` on the project's workspace.yaml and dagster.yaml (SQLite instance, run queue
with the one-combined-run limit), its code location on a static catalog of synthetic metadata-only
items (tests/dagster/test_backfill.py: NoStats indexing, one small real COG). Items are *published* by linking
them into the collection (atomic rewrite of collection.json, a later `updated` each time); the item
sensor (every 2 s) indexes them in one run each, the `combined_index_trigger` sensor (every
COMBINED_INTERVAL s) requests the combined runs. The tests share the daemon and run in file order.

1. Items finish while a combined run is queued and running, the last ones just after it: the combined
   index ends holding every item (ids compared as sets), and combined runs never overlap.
2. Items keep arriving for STREAM_SECONDS: combined runs keep happening meanwhile (no starvation) and
   the end state holds every item.
3. A combined run fails (its folder replaced by a file): the `all_indexed_items_combined` check,
   reported by the sensor, fails with the number of missing items and the time of the oldest; once
   the storage is back the next run catches up and the check passes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from stacchip_assets.dagster_defs.combined_trigger import (
    CHECK_KEY,
    SENSOR_NAME,
    active_combined_runs,
)
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.io.storage import Storage

from tests.conftest import PROJECT, require_servers
from tests.dagster.test_backfill import COLLECTION, item_grid, write_catalog

COMBINED_INTERVAL = 5
#: How long the stream of acceptance 2 goes on (one item per fifth of it).
STREAM_SECONDS = 40
#: A bound for anything to happen (the runs are separate processes; a loaded 2-core machine is slow).
WAIT = 240
CHIP = dg.AssetKey("chip_index")
COMBINE = {"stacchip/role": "combine"}
COLLECTIONS_YAML = f"""collections:
  - preset: naip
    collection: {COLLECTION}
    search: {{selection: all, max_items: null}}
    chips: {{indexer: nostats, chip_size: 256, chip_max_nodata: 0.5, assets: [image]}}
"""
#: Every STACCHIP_* setting the code location reads, cleared (then the test's own set).
CLEARED = ("STACCHIP_STAC_API_URL", "STACCHIP_COLLECTIONS", "STACCHIP_S3_ENDPOINT_URL", "STACCHIP_S3_REGION",
           "STACCHIP_CHIP_SIZE", "STACCHIP_CHIP_MAX_NODATA", "STACCHIP_GDAL_OPTIONS", "STACCHIP_HREF_SIGNER",
           "STACCHIP_MAX_ITEMS_PER_TICK", "STACCHIP_EXECUTOR")


class Live:
    """A Dagster home, a catalog whose items are linked in as they are published, a storage base, and
    the daemon."""

    def __init__(self, root: Path, n_items: int) -> None:
        self.grid = item_grid(n_items, seed=16)
        self.catalog = write_catalog(root / "catalog", self.grid)
        self.collection_json = self.catalog.parent / COLLECTION / "collection.json"
        self.collection = json.loads(self.collection_json.read_text())
        self.published: list[str] = []
        self.clock = 0
        self._write_links()
        self.home, self.base = root / "home", root / "base"
        self.home.mkdir()
        shutil.copyfile(PROJECT / "dagster.yaml", self.home / "dagster.yaml")
        (root / "collections.yaml").write_text(COLLECTIONS_YAML)
        self.env = dict(os.environ, DAGSTER_HOME=str(self.home), STACCHIP_STAC_CATALOG=str(self.catalog),
                        STACCHIP_COLLECTIONS_FILE=str(root / "collections.yaml"), STACCHIP_STORAGE_BASE=str(self.base),
                        STACCHIP_SENSOR_INTERVAL_SECONDS="2", STACCHIP_COMBINED_INTERVAL_SECONDS=str(COMBINED_INTERVAL),
                        **{name: "" for name in CLEARED})
        self.env.pop("DAGSTER_IS_DEV_CLI", None)
        self.log = root / "daemon.log"
        self.daemon: subprocess.Popen | None = None

    def _write_links(self) -> None:
        links = [link for link in self.collection["links"] if link["rel"] != "item"]
        links += [{"rel": "item", "href": f"./{i}/{i}.json", "type": "application/geo+json"} for i in self.published]
        tmp = self.collection_json.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.collection, "links": links}))
        os.replace(tmp, self.collection_json)  # the sensor never reads a half-written collection

    def publish(self, count: int) -> list[str]:
        """Link the next `count` items into the collection, each with a later `updated`."""
        new = [item_id for item_id, _, _ in self.grid[len(self.published): len(self.published) + count]]
        for item_id in new:
            self.clock += 1
            path = self.catalog.parent / COLLECTION / item_id / f"{item_id}.json"
            data = json.loads(path.read_text())
            data["properties"]["updated"] = f"2025-01-01T00:{self.clock // 60:02d}:{self.clock % 60:02d}Z"
            path.write_text(json.dumps(data))
        self.published += new
        self._write_links()
        return new

    def keys(self) -> set[str]:
        return {f"{COLLECTION}/{i}" for i in self.published}

    def start(self) -> None:
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.daemon = subprocess.Popen(["dagster-daemon", "run", "-w", str(PROJECT / "workspace.yaml")], cwd=PROJECT,
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def combined(self) -> set[str]:
        return {f"{c}/{i}" for c, i in CombinedIndex(Storage(self.base)).items()}

    def materializations(self, instance) -> dict[str, list]:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=CHIP), limit=10_000).records
        out: dict[str, list] = {}
        for record in records:
            out.setdefault(record.partition_key, []).append(record)
        return out

    def combined_runs(self, instance) -> list:
        """Run records of the combined runs, oldest first."""
        return sorted(instance.get_run_records(dg.RunsFilter(tags=COMBINE)), key=lambda rec: rec.create_timestamp)

    def wait(self, what: str, predicate, timeout: float, step: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            assert self.daemon is not None and self.daemon.poll() is None, f"daemon died:\n{self.log_tail()}"
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n{self.log_tail()}")
            time.sleep(step)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def latest_check(self, instance):
        records = instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=1)
        event = records[0].event if records else None
        data = event.dagster_event.event_specific_data if event is not None and event.dagster_event else None
        return data if isinstance(data, dg.AssetCheckEvaluation) else None

    def caught_up(self, instance) -> bool:
        """Every published item indexed and combined, the check's latest evaluation passed, and no combined
        run left queued or running (a run materializes before its other checks end)."""
        check = self.latest_check(instance)
        return (set(self.materializations(instance)) == self.keys() and self.combined() == self.keys()
                and check is not None and check.passed and not active_combined_runs(instance))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    require_servers("dagster")
    from tests.support.servers import stop_process_group

    deployment = Live(tmp_path_factory.mktemp("live16"), n_items=40)
    deployment.start()
    try:
        yield deployment
    finally:
        if deployment.daemon is not None:
            stop_process_group(deployment.daemon, timeout=20)


def assert_runs_never_overlap(runs) -> None:
    """One combined run at a time, none queued beside another: each was created after the previous ended."""
    for before, after in itertools.pairwise(runs):
        assert before.end_time is not None and after.create_timestamp.timestamp() >= before.end_time, (before, after)
    assert all(r.dagster_run.tags.get("dagster/sensor_name") == SENSOR_NAME for r in runs)


@pytest.mark.timeout(600)
def test_items_finishing_after_a_queued_combined_run_are_combined(live):
    live.publish(5)
    with live.instance() as instance:
        # a combined run is requested as soon as the first items are materialized; more are still queued
        first = live.wait("a combined run queued or started",
                          lambda: [r for r in live.combined_runs(instance) if r.dagster_run.status in (
                              DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)], WAIT)
        live.publish(2)  # the last items, finishing just after it
        live.wait("all 7 items indexed", lambda: set(live.materializations(instance)) == live.keys(), WAIT)
        last = max(r.timestamp for recs in live.materializations(instance).values() for r in recs)
        live.wait("the combined index holds every item", lambda: live.caught_up(instance), 2 * COMBINED_INTERVAL + WAIT)
        caught_up_after = time.time() - last
        runs = live.combined_runs(instance)
        first_combined = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("combined_index")),
                                                         limit=100, ascending=True).records[0]
        first_cursor = first_combined.asset_materialization.metadata["state"].value["event_cursor"]
        late = [k for k, recs in live.materializations(instance).items() if recs[0].storage_id > first_cursor]
    print(f"\n[acceptance 1] {len(live.keys())} items, {len(runs)} combined runs; {len(late)} items materialized after "
          f"the first combined run's cursor; caught up (and seen) {caught_up_after:.1f} s after the last chip_index "
          f"materialization (trigger interval {COMBINED_INTERVAL} s)")
    assert first[0].dagster_run.run_id == runs[0].dagster_run.run_id
    assert late, "no item finished after the first combined run read the event log: the scenario did not happen"
    assert live.combined() == live.keys()
    assert {r.dagster_run.status for r in runs} == {DagsterRunStatus.SUCCESS}
    assert_runs_never_overlap(runs)


@pytest.mark.timeout(600)
def test_items_arriving_for_a_while_do_not_starve_the_combined_index(live):
    with live.instance() as instance:
        live.wait("caught up before the stream", lambda: live.caught_up(instance), WAIT)
        before_runs, before_items = len(live.combined_runs(instance)), len(live.keys())
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            live.publish(1)
            time.sleep(STREAM_SECONDS / 5)
        live.wait("the stream indexed", lambda: set(live.materializations(instance)) == live.keys(), WAIT)
        live.wait("the combined index holds every item", lambda: live.caught_up(instance), 2 * COMBINED_INTERVAL + WAIT)
        runs = live.combined_runs(instance)
        sizes = [r.asset_materialization.metadata["items"].value for r in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("combined_index")), limit=1000, ascending=True).records]
    # combined updates that held some of the stream's items but not all: it followed the stream, not only its end
    partial = [n for n in sizes if before_items < n < len(live.keys())]
    print(f"\n[acceptance 2] {len(live.keys()) - before_items} items published over {STREAM_SECONDS} s, "
          f"{len(runs) - before_runs} combined runs for them; combined sizes {sizes}")
    assert live.combined() == live.keys()
    assert partial
    assert sizes[-1] == len(live.keys())
    assert {r.dagster_run.status for r in runs} == {DagsterRunStatus.SUCCESS}
    assert_runs_never_overlap(runs)


@pytest.mark.timeout(600)
def test_after_a_failed_combined_run_the_check_fails_then_the_index_catches_up(live):
    combined_dir = live.base / "combined"
    aside = live.base / "combined.aside"
    if not live.published:  # run by itself: a first item, so that the combined index exists
        live.publish(1)
    with live.instance() as instance:
        live.wait("caught up before the failure", lambda: live.caught_up(instance), WAIT)
        failures_before = sum(r.dagster_run.status == DagsterRunStatus.FAILURE for r in live.combined_runs(instance))
        combined_dir.rename(aside)
        combined_dir.write_text("not a folder: the combined index cannot be written")  # the storage is unusable
        try:
            new = live.publish(2)
            new_keys = {f"{COLLECTION}/{i}" for i in new}
            live.wait("a combined run failed", lambda: sum(r.dagster_run.status == DagsterRunStatus.FAILURE
                                                          for r in live.combined_runs(instance)) > failures_before, WAIT)
            live.wait("both new items indexed", lambda: set(live.materializations(instance)) == live.keys(), WAIT)
            check = live.wait("the check reports the 2 missing items", lambda: (
                (c := live.latest_check(instance)) is not None and not c.passed
                and c.metadata["missing_items"].value == 2 and c), WAIT)
            oldest = min(live.materializations(instance)[k][0].timestamp for k in new_keys)
        finally:
            combined_dir.unlink()
            aside.rename(combined_dir)
        live.wait("the combined index holds every item again", lambda: live.caught_up(instance), 2 * COMBINED_INTERVAL + WAIT)
        passed = live.latest_check(instance)
        runs = live.combined_runs(instance)
    assert check.metadata["examples"].value == sorted(new_keys)
    assert check.metadata["missing_since"].value == dt.datetime.fromtimestamp(oldest, dt.timezone.utc).isoformat(
        timespec="seconds")
    assert "2 indexed items" in check.description and check.severity == dg.AssetCheckSeverity.ERROR
    assert passed.passed and passed.metadata["missing_items"].value == 0
    assert live.combined() == live.keys()
    statuses = [r.dagster_run.status for r in runs]
    assert DagsterRunStatus.FAILURE in statuses and statuses[-1] == DagsterRunStatus.SUCCESS
    assert_runs_never_overlap(runs)
    print(f"\n[acceptance 3] {statuses.count(DagsterRunStatus.FAILURE)} failed combined runs while the storage was "
          f"unusable; the check said {check.description!r}; then {passed.description!r}")


def test_a_bad_combined_interval_is_a_clear_error(monkeypatch):
    from stacchip_assets.dagster_defs import build_definitions
    from stacchip_assets.errors import StacchipError

    monkeypatch.setenv("STACCHIP_COMBINED_INTERVAL_SECONDS", "half a minute")
    with pytest.raises(StacchipError, match="STACCHIP_COMBINED_INTERVAL_SECONDS must be a whole number of seconds, "
                                            "got 'half a minute'"):
        build_definitions()
    monkeypatch.setenv("STACCHIP_COMBINED_INTERVAL_SECONDS", "7")
    sensor = next(s for s in build_definitions().sensors if s.name == SENSOR_NAME)
    assert sensor.minimum_interval_seconds == 7


def test_a_combined_run_launched_without_the_tag_counts_as_active():
    """A combined_index materialization launched from the UI (the asset job, no stacchip/role tag) is
    found through its planned materialization, so the trigger does not queue a second run beside it."""
    from stacchip_assets.definitions import defs

    with dg.instance_for_test() as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        run = instance.create_run_for_job(job_def=job, asset_selection=frozenset({dg.AssetKey("combined_index")}),
                                          status=DagsterRunStatus.NOT_STARTED)
        assert "stacchip/role" not in run.tags
        assert active_combined_runs(instance) == [run.run_id]
        instance.report_run_failed(run)
        assert active_combined_runs(instance) == []
