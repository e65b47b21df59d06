"""kill -9 of a Dagster *run process*: no partial file is visible, and re-running the killed runs ends
exactly where a clean run ends.

Real runs on a real on-disk instance: a fresh ``DAGSTER_HOME`` holding the project's ``dagster.yaml``
(SQLite run/event storage), the code location ``stacchip_assets.definitions:defs`` on the embedded
sample catalog (7 items, 5 collections), its ``chip_index`` partitions registered first. A child
process launches the runs one after the other with ``execute_job(reconstructable job, instance)``:
each run executes in that process (the jobs use the in-process executor), so the child *is* the run
process. The test kills its whole process group with SIGKILL, either after a staggered delay or the
moment the kernel (inotify) reports that the run created a temporary file of a per-item index or
started the combined-index update, and then checks what a reader sees and what Dagster recorded.

Writes in progress live in ``{base}/.tmp/`` (``storage.Storage``): a temporary left there after the
kill is the evidence that the kill landed mid-write (its first bytes tell what it was: ``PAR1`` a
Parquet file, ``{`` item JSON, PNG a quicklook); the next writer removes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from stacchip_assets.dagster_defs import COMBINED_INDEX_KEY, ITEM_PARTITIONS_NAME

from tests.conftest import PROJECT
from tests.support.dagster_support import ALL_KEYS

WORKER = textwrap.dedent(
    """
    import sys
    from dagster import DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("stacchip_assets.definitions", "defs")
    chip_job = repo.get_reconstructable_job("chip_index_job")
    combined_job = repo.get_reconstructable_job("combined_index_job")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    keys, rounds = sys.argv[1].split(","), int(sys.argv[2])
    with DagsterInstance.get() as instance:
        for number in range(1, rounds + 1):
            print("round", number, flush=True)
            for key in keys:
                result = execute_job(chip_job, instance=instance, tags={"dagster/partition": key}, run_config=quiet)
                print("run", result.run_id, key, result.success, flush=True)
            result = execute_job(combined_job, instance=instance, run_config=quiet)
            print("run", result.run_id, "combined", result.success, flush=True)
    print("done", flush=True)
    """
)

#: Every STACCHIP_* setting the code location reads, cleared so that it indexes the sample catalog.
CLEARED = ("STACCHIP_STAC_API_URL", "STACCHIP_STAC_CATALOG", "STACCHIP_COLLECTIONS", "STACCHIP_COLLECTIONS_FILE",
           "STACCHIP_S3_ENDPOINT_URL", "STACCHIP_S3_REGION", "STACCHIP_CHIP_SIZE", "STACCHIP_CHIP_MAX_NODATA",
           "STACCHIP_GDAL_OPTIONS", "STACCHIP_HREF_SIGNER", "STACCHIP_MAX_ITEMS_PER_TICK")


# -- inotify (Linux), so that a kill can land while a file is being written -------------------------

IN_MOVED_TO, IN_CREATE, IN_ISDIR = 0x80, 0x100, 0x40000000


class Inotify:
    """The kernel's file-creation events of some folders (libc through ctypes)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: dict[int, Path] = {}

    def watch(self, folder: Path, mask: int = IN_CREATE | IN_MOVED_TO) -> None:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(folder), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        self.folders[wd] = folder

    def events(self, timeout: float) -> list[tuple[Path, int, str]]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        data, out, offset = os.read(self.fd, 1 << 16), [], 0
        while offset < len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
            out.append((self.folders.get(wd), mask, name))
            offset += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


# -- the runs ---------------------------------------------------------------------------------------

@dataclass
class Deployment:
    """A Dagster home (the project's dagster.yaml) and a storage base, with the partitions registered."""

    home: Path
    base: Path
    sample_dir: Path
    runs_seen: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, sample_catalog: Path) -> Deployment:
        home, base = root / "dagster_home", root / "base"
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
        deployment = cls(home, base, sample_catalog.parent)
        with deployment.instance() as instance:
            instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, ALL_KEYS)
        return deployment

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def env(self) -> dict[str, str]:
        env = dict(os.environ, DAGSTER_HOME=str(self.home), STACCHIP_STORAGE_BASE=str(self.base),
                   STACCHIP_SAMPLE_DIR=str(self.sample_dir))
        env.update({name: "" for name in CLEARED})
        env.pop("DAGSTER_IS_DEV_CLI", None)
        return env

    def start(self, rounds: int) -> subprocess.Popen:
        # at the lowest CPU priority, so that the test's kill preempts it when a write event wakes it
        return subprocess.Popen([sys.executable, "-c", WORKER, ",".join(ALL_KEYS), str(rounds)], cwd=PROJECT,
                                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=lambda: os.nice(19))

    def run_to_completion(self) -> list[str]:
        """One round (every partition, then the combined index) in a new run process; its run lines."""
        worker = self.start(rounds=1)
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        lines = [line.split() for line in out.splitlines() if line.startswith("run ")]
        failed = [run_id for _, run_id, _, success in lines if success != "True"]
        assert len(lines) == len(ALL_KEYS) + 1 and not failed, f"{out}\n{self.failures(failed)}"
        return out.splitlines()

    def failures(self, run_ids: list[str]) -> list[str]:
        with self.instance() as instance:
            return [e.dagster_event.event_specific_data.error.message for run_id in run_ids
                    for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]


def kill_group(worker: subprocess.Popen) -> str:
    os.killpg(worker.pid, signal.SIGKILL)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL
    return out


def wait_for_line(worker: subprocess.Popen, wanted: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = worker.stdout.readline()
        if not line:
            raise AssertionError(f"the worker ended before {wanted!r}: {worker.stderr.read()[-3000:]}")
        if line.strip() == wanted:
            return
    raise TimeoutError(wanted)


def kill_on_event(worker: subprocess.Popen, notify: Inotify, matches, nth: int = 1, timeout: float = 300) -> tuple[Path, str]:
    """SIGKILL the worker's group the moment the nth matching file event arrives."""
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before the awaited write"
        for folder, mask, name in notify.events(0.5):
            if matches(folder, mask, name):
                seen += 1
                if seen == nth:
                    os.killpg(worker.pid, signal.SIGKILL)
                    return folder, name
    raise TimeoutError("no matching write event")


# -- what a reader and what Dagster see -------------------------------------------------------------

def hidden(path: Path, base: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(base).parts)


def visible_rows(base: Path) -> dict[str, int]:
    """Every parquet file a reader sees (hidden temporary files skipped), read whole: key -> rows."""
    rows = {}
    for path in sorted(base.rglob("*.parquet")):
        if not hidden(path, base):
            rows[str(path.relative_to(base))] = pq.read_table(path).num_rows  # every page decodes
    for path in base.rglob("*.json"):
        if not hidden(path, base):
            json.loads(path.read_text())
    return rows


def leftover_temporaries(base: Path) -> list[str]:
    """Temporary files of killed writes ({base}/.tmp/*, or any hidden *.tmp), each with its kind."""
    if not base.exists():
        return []
    found = []
    for path in sorted(base.rglob("*.tmp")):
        if path.is_file() and hidden(path, base):
            head = path.read_bytes()[:4]
            kind = {b"PAR1": "parquet", b"\x89PNG": "png"}.get(head, "json" if head[:1] == b"{" else f"{head!r}")
            found.append(f"{path.relative_to(base)} ({kind}, {path.stat().st_size} bytes)")
    return found


def combined_chip_ids(base: Path) -> list[str]:
    table = pads.dataset(str(base / "combined"), format="parquet").to_table(columns=["collection", "chipid"])
    return sorted(f"{c}/{i}" for c, i in zip(table["collection"].to_pylist(), table["chipid"].to_pylist()))


def combined_checks(instance: dg.DagsterInstance) -> dict[str, bool]:
    """Latest result of each combined-index asset check: name -> passed."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    names = ("unique_chip_ids", "every_materialized_item_present", "row_count_equals_sum", "combined_geometries_valid")
    keys = [dg.AssetCheckKey(COMBINED_INDEX_KEY, name) for name in names]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    return {key.name: records[key].status == AssetCheckExecutionRecordStatus.SUCCEEDED for key in keys if key in records}


def combined_state(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    return dict(event.asset_materialization.metadata["state"].value)


def run_of(run) -> str:
    return run.tags.get("dagster/partition") or run.job_name


@pytest.fixture(scope="module")
def clean(sample_catalog, tmp_path_factory):
    """A clean run: every partition once, then the combined index; what it leaves."""
    deployment = Deployment.create(tmp_path_factory.mktemp("clean-run"), sample_catalog)
    deployment.run_to_completion()
    rows = visible_rows(deployment.base)
    ids = combined_chip_ids(deployment.base)
    assert len(ids) == len(set(ids)) and len(ids) == sum(v for k, v in rows.items() if k.startswith("combined/"))
    with deployment.instance() as instance:
        assert all(combined_checks(instance).values())
    return rows, ids


@dataclass
class Outcome:
    """What one kill left, and what the re-run produced."""

    temporaries: list[str]
    killed: list[tuple[str, str, str]]  # (run id, partition or job, status) of the runs left unfinished
    rows_after_kill: dict[str, int]
    rows: dict[str, int]
    ids: list[str]
    later_runs: dict[str, list[str]]  # partition or job of each killed run -> statuses of its runs, oldest first
    checks: dict[str, bool]
    state: dict
    combined_ids_before_rerun: list[str]
    temporaries_after_rerun: list[str]
    combined_materializations_after_kill: int


def kill_and_rerun(deployment: Deployment, kill) -> Outcome:
    kill()
    temporaries = leftover_temporaries(deployment.base)
    rows_after_kill = visible_rows(deployment.base)
    combined_before = combined_chip_ids(deployment.base) if (deployment.base / "combined").exists() else []
    with deployment.instance() as instance:
        unfinished = [r for r in instance.get_runs() if not r.is_finished]
        killed = [(r.run_id, run_of(r), r.status.value) for r in unfinished]
        combined_materializations = len(instance.fetch_materializations(COMBINED_INDEX_KEY, limit=1000).records)
    deployment.run_to_completion()
    with deployment.instance() as instance:
        later = {}
        for run_id, what, _status in killed:
            runs = [r for r in reversed(instance.get_runs()) if run_of(r) == what]
            start = [r.run_id for r in runs].index(run_id)
            later[what] = [r.status.value for r in runs[start:]]  # the killed run, then the later ones
        checks, state = combined_checks(instance), combined_state(instance)
    return Outcome(temporaries, killed, rows_after_kill, visible_rows(deployment.base),
                   combined_chip_ids(deployment.base), later, checks, state, combined_before,
                   leftover_temporaries(deployment.base), combined_materializations)


def assert_whole_and_equal_to_clean(outcome: Outcome, clean) -> None:
    clean_rows, clean_ids = clean
    # after the kill: every visible file is whole (read above) and has exactly the clean run's rows
    for key, rows in outcome.rows_after_kill.items():
        assert rows == clean_rows[key], key
    # after the re-run: the same files, rows and chip ids as the clean run; no chip lost, none twice
    assert outcome.rows == clean_rows
    assert outcome.ids == clean_ids
    assert outcome.temporaries_after_rerun == [], "the re-run removes the temporaries of the killed writer"
    # Dagster: at most one run was in progress when its process died; it stays where it was (STARTED,
    # or NOT_STARTED when the kill came between creating the run and starting it): nothing watches a
    # dead run worker with the default run launcher. A later run of the same partition succeeds.
    assert len(outcome.killed) <= 1, outcome.killed
    for _run_id, what, status in outcome.killed:
        assert status in ("STARTED", "NOT_STARTED"), status
        assert outcome.later_runs[what] == [status, "SUCCESS"], outcome.later_runs


def report(record_property, name: str, outcome: Outcome) -> None:
    mid_write = bool(outcome.temporaries)
    record_property("mid_write", mid_write)
    print(f"\n[kill] {name}: killed runs {[(w, s) for _, w, s in outcome.killed]}, temporaries left "
          f"{outcome.temporaries}, mid-write={mid_write}, checks after re-run {outcome.checks}")


@pytest.mark.parametrize("delay", [2.6, 3.4, 4.5, 6.0, 8.5])
def test_kill_9_of_a_run_process_at_staggered_moments(sample_catalog, clean, tmp_path, delay, record_property):
    deployment = Deployment.create(tmp_path, sample_catalog)
    worker = deployment.start(rounds=20)

    def kill():
        time.sleep(delay)
        assert worker.poll() is None, "the run process must still be running when it is killed"
        kill_group(worker)

    outcome = kill_and_rerun(deployment, kill)
    report(record_property, f"after {delay} s", outcome)
    assert_whole_and_equal_to_clean(outcome, clean)


def _temporary_created(folder, mask, name) -> bool:
    return bool(mask & IN_CREATE) and name.endswith(".tmp")


#: A chip_index run writes three files, in this order: the item JSON, the index, the quicklook.
WRITES_PER_RUN, INDEX_WRITE = 3, 2


def kill_at_a_round_2_temporary(root: Path, sample_catalog: Path, nth: int, after_runs: int = 0) -> Outcome:
    """Rounds of runs; in round 2, after `after_runs` runs have reported, SIGKILL the worker the moment
    it creates its nth temporary file; then re-run (see kill_and_rerun)."""
    deployment = Deployment.create(root, sample_catalog)
    worker = deployment.start(rounds=20)
    notify = Inotify()
    try:
        def kill():
            wait_for_line(worker, "round 2")
            for _ in range(after_runs):
                worker.stdout.readline()
            notify.watch(deployment.base / ".tmp")
            kill_on_event(worker, notify, _temporary_created, nth=nth)
            kill_group(worker)

        return kill_and_rerun(deployment, kill)
    finally:
        notify.close()


@pytest.mark.parametrize("nth", [1, 4, 7])
def test_kill_9_while_a_run_rewrites_a_per_item_index(sample_catalog, clean, tmp_path, nth, record_property):
    """Round 2 rewrites every index over the one of round 1: the kill lands when the nth run of the
    round creates the temporary file of its index."""
    outcome = kill_at_a_round_2_temporary(tmp_path, sample_catalog, WRITES_PER_RUN * (nth - 1) + INDEX_WRITE)
    report(record_property, f"at the index write of run {nth} of round 2", outcome)
    assert len(outcome.killed) == 1 and outcome.killed[0][1] == ALL_KEYS[nth - 1], outcome.killed
    assert all("(parquet" in t or "(b''" in t for t in outcome.temporaries), outcome.temporaries  # the index's
    assert_whole_and_equal_to_clean(outcome, clean)
    assert all(outcome.checks.values()), outcome.checks


def _combined_dir_created(folder, mask, name) -> bool:
    return bool(mask & IN_CREATE) and bool(mask & IN_ISDIR)


def combined_kill_first_update(deployment: Deployment, worker: subprocess.Popen, nth: int):
    """Kill the first combined-index update when it creates its nth collection folder (the items of
    the collections before it are copied, the others not yet)."""
    notify = Inotify()
    (deployment.base / "combined").mkdir(parents=True)
    notify.watch(deployment.base / "combined")

    def kill():
        try:
            kill_on_event(worker, notify, _combined_dir_created, nth=nth)
            kill_group(worker)
        finally:
            notify.close()

    return kill


@pytest.fixture(scope="module")
def first_update_killed(sample_catalog, tmp_path_factory) -> list[Outcome]:
    outcomes = []
    for nth in (2, 4):
        deployment = Deployment.create(tmp_path_factory.mktemp(f"first-update-{nth}"), sample_catalog)
        worker = deployment.start(rounds=20)
        outcomes.append(kill_and_rerun(deployment, combined_kill_first_update(deployment, worker, nth)))
    return outcomes


def test_kill_9_in_the_middle_of_the_first_combined_update(first_update_killed, clean, record_property):
    clean_rows, _ = clean
    for nth, outcome in zip((2, 4), first_update_killed):
        report(record_property, f"first combined update, at its collection folder {nth}", outcome)
        assert len(outcome.killed) == 1 and outcome.killed[0][1] == "combined_index_job", outcome.killed
        # the kill landed mid-update: it had copied the items of the collections before folder nth
        # (maybe more: the copies take milliseconds), and it never recorded its materialization
        copied = {k for k in outcome.rows_after_kill if k.startswith("combined/")}
        assert len(copied) >= nth - 1, copied
        assert outcome.combined_materializations_after_kill == 0
        print(f"   {len(copied)} of {len(ALL_KEYS)} items copied when the update was killed")
        assert_whole_and_equal_to_clean(outcome, clean)
        assert outcome.checks["unique_chip_ids"] and outcome.checks["every_materialized_item_present"]


def test_the_combined_totals_after_a_killed_first_update_equal_the_files(first_update_killed, clean):
    _, clean_ids = clean
    for outcome in first_update_killed:
        assert (outcome.state["items"], outcome.state["rows"]) == (len(ALL_KEYS), len(clean_ids)), outcome.state
        assert all(outcome.checks.values()), outcome.checks


@pytest.mark.parametrize("nth", [2, 6])
def test_kill_9_while_a_combined_update_rewrites_its_files(sample_catalog, clean, tmp_path, nth, record_property):
    """Round 2's combined update rewrites every item's file: the kill lands at its nth temporary file."""
    # the chip_index runs of round 2 report first, then its combined run writes
    outcome = kill_at_a_round_2_temporary(tmp_path, sample_catalog, nth, after_runs=len(ALL_KEYS))
    report(record_property, f"round 2 combined update, at its temporary file {nth}", outcome)
    assert len(outcome.killed) == 1 and outcome.killed[0][1] == "combined_index_job", outcome.killed
    assert_whole_and_equal_to_clean(outcome, clean)
    assert outcome.combined_ids_before_rerun == clean[1]  # the snapshot of round 1 stays whole meanwhile
    assert all(outcome.checks.values()), outcome.checks


def test_run_monitoring_cancels_a_run_whose_process_was_killed(sample_catalog, tmp_path):
    """A killed run never reports its end; the project's run monitoring (dagster.yaml) cancels it once it
    outlives its dagster/max_runtime, so it does not hold a queue slot (or the combine limit) for good.
    The intervals are shortened here, and the killed run's max_runtime tag set to 1 s, as an operator
    could: the test need not wait an hour."""
    import yaml
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    from tests.support.servers import stop_process_group

    deployment = Deployment.create(tmp_path, sample_catalog)
    config = yaml.safe_load((deployment.home / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True and config["run_monitoring"]["max_runtime_seconds"] > 0
    config["run_monitoring"].update(poll_interval_seconds=1, cancel_timeout_seconds=1)
    (deployment.home / "dagster.yaml").write_text(yaml.safe_dump(config))

    worker = deployment.start(rounds=20)
    wait_for_line(worker, "round 1")
    worker.stdout.readline()  # the first run ended; wait for the next one to start, then kill it
    with deployment.instance() as instance:
        deadline = time.monotonic() + 60
        while not (started := instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))):
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
        kill_group(worker)
        run = started[0]
        assert run.tags["dagster/max_runtime"] == "3600", run.tags  # chip_index_job's own limit
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED  # the default launcher cannot tell
        instance.add_run_tags(run.run_id, {"dagster/max_runtime": "1"})

    # the daemon with no code location: run monitoring needs none (and no sensor may launch runs here)
    (tmp_path / "workspace.yaml").write_text("load_from: []\n")
    daemon = subprocess.Popen(["dagster-daemon", "run", "-w", str(tmp_path / "workspace.yaml")], cwd=tmp_path,
                              env=deployment.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        with deployment.instance() as instance:
            deadline = time.monotonic() + 120
            while not (ended := instance.get_run_by_id(run.run_id)).is_finished:
                assert daemon.poll() is None, daemon.stderr.read()[-3000:]
                assert time.monotonic() < deadline, f"run still {ended.status}"
                time.sleep(0.5)
            messages = [e.message for e in instance.all_logs(run.run_id) if e.message]
    finally:
        stop_process_group(daemon)
    # failed (the launcher could not reach the dead process) or cancelled: either way it frees its slot
    assert ended.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED), ended.status
    assert any("maximum runtime of 1 seconds" in m for m in messages), messages[-5:]
