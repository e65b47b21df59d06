"""The distributed engines, run for real (issue 14): the chip_index batch path on the dagster-celery
executor with a Redis broker and two `dagster-celery worker` processes, and training extraction on a
`dask scheduler` with two `dask worker` processes. Both must give byte-identical files to an
in-process run. The servers and workers are started here as subprocesses on free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME, item_partition_key
from stacchip_assets.dagster_defs.batching import RANGE_END_TAG, RANGE_START_TAG

from tests.conftest import PROJECT
from tests.e2e.test_ingest_batching import NAIP, naip_catalog
from tests.support.dagster_support import shared_sample
from tests.support.servers import free_port, stop_process_group

pytestmark = pytest.mark.e2e
ROOT = PROJECT


def _env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=pythonpath, **extra)


def _wait(what: str, ready, processes: list[subprocess.Popen], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {process.returncode}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------------------
# Celery
# -------------------------------------------------------------------------------------------------

@pytest.fixture()
def redis_url(tmp_path) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: apt-get install -y redis-server")
    import redis

    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait("redis-server", lambda: redis.Redis(port=port).ping(), [process], 30)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


def _celery_workers(redis_url: str, home: Path, env: dict[str, str], count: int = 2) -> list[subprocess.Popen]:
    from celery import Celery

    config = home / "celery.yaml"
    config.write_text(f"execution:\n  config:\n    broker: '{redis_url}/0'\n    backend: '{redis_url}/1'\n")
    workers = [subprocess.Popen(
        ["dagster-celery", "worker", "start", "-A", "dagster_celery.app", "-y", str(config), "--name", f"w{n}",
         "--loglevel", "WARNING", "--", "--concurrency=1"],
        env=env, cwd=str(home), stdout=open(home / f"worker{n}.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True) for n in range(count)]
    app = Celery(broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    try:
        _wait("celery workers", lambda: len(app.control.ping(timeout=1.0)) >= count, workers, 180)
    except BaseException:
        for worker in workers:
            stop_process_group(worker)
        raise
    return workers


def test_chip_index_batches_on_celery_workers_equal_an_in_process_run(redis_url, tmp_path, tmp_path_factory,
                                                                       monkeypatch):
    from tests.e2e import distributed_jobs

    sample = shared_sample(tmp_path_factory)
    catalog = naip_catalog(sample, tmp_path / "catalog", 12)
    keys = [item_partition_key(NAIP, f"naip-copy-{n:05d}") for n in range(12)]
    batches = [keys[:6], keys[6:]]
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # one base path for both runs (the index rows name the stored item by its path): the Celery run's
    # files are moved aside before the in-process run writes its own there
    base, celery_base = tmp_path / "base", tmp_path / "celery-base"
    env = _env(DAGSTER_HOME=str(home), STACCHIP_STAC_CATALOG=str(catalog), STACCHIP_STORAGE_BASE=str(base),
               STACCHIP_EXECUTOR="celery", STACCHIP_TEST_COG_ROOT=str(sample.parent))
    for key in ("DAGSTER_HOME", "STACCHIP_STAC_CATALOG", "STACCHIP_STORAGE_BASE", "STACCHIP_EXECUTOR",
                "STACCHIP_TEST_COG_ROOT"):
        monkeypatch.setenv(key, env[key])
    with dg.DagsterInstance.get() as instance:  # its SQLite storages exist before the workers open them
        instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, keys)
    workers = _celery_workers(redis_url, home, env)
    try:
        with dg.DagsterInstance.get() as instance:
            run_config = {"execution": {"config": {"broker": f"{redis_url}/0", "backend": f"{redis_url}/1"}}}

            def run(batch: list[str]) -> dg.ExecutionResult:
                tags = {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1]}
                with dg.execute_job(dg.reconstructable(distributed_jobs.chip_index_job), instance=instance,
                                    run_config=run_config, tags=tags) as result:
                    return result.success, result.run_id

            outcomes = [run(batch) for batch in batches]
            assert [ok for ok, _ in outcomes] == [True, True], (home / "worker0.log").read_text()[-3000:]
            pgids = {os.getpgid(w.pid) for w in workers}
            step_pgids = set()
            for _, run_id in outcomes:
                for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
                    pid = entry.dagster_event.pid
                    assert pid != os.getpid()
                    step_pgids.add(os.getpgid(pid) if _alive(pid) else None)
            step_pgids.discard(None)
            assert step_pgids <= pgids
            print(f"\ncelery: steps ran in worker process groups {sorted(step_pgids)} of {sorted(pgids)}")

        base.rename(celery_base)
        monkeypatch.setenv("STACCHIP_EXECUTOR", "in_process")
        job = distributed_jobs.chip_index_job()
        with dg.instance_for_test() as local:
            local.add_dynamic_partitions(ITEM_PARTITIONS_NAME, keys)
            for batch in batches:
                assert job.execute_in_process(instance=local, tags={RANGE_START_TAG: batch[0],
                                                                    RANGE_END_TAG: batch[-1]}).success
    finally:
        for worker in workers:
            stop_process_group(worker)
    remote, here = _files(celery_base / "index"), _files(base / "index")
    assert len([k for k in here if k.endswith(".parquet")]) == 12
    assert sorted(remote) == sorted(here)
    for name in here:
        assert remote[name] == here[name], name


def _alive(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except OSError:
        return False


# -------------------------------------------------------------------------------------------------
# Dask distributed
# -------------------------------------------------------------------------------------------------

@pytest.fixture()
def dask_cluster(tmp_path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    distributed = pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = _env()
    scheduler = subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 env=env, cwd=str(tmp_path), stdout=open(tmp_path / "scheduler.log", "w"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
    workers = [subprocess.Popen(["dask", "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                 "--memory-limit", "0", "--name", f"w{n}"],
                                env=env, cwd=str(tmp_path), stdout=open(tmp_path / f"worker{n}.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True) for n in range(2)]
    processes = [scheduler, *workers]
    try:
        def ready() -> bool:
            with distributed.Client(address, timeout=5) as client:
                return len(client.scheduler_info()["workers"]) >= 2
        _wait("dask scheduler and workers", ready, processes, 120)
        yield address, workers
    finally:
        for process in reversed(processes):
            stop_process_group(process)


def test_training_extraction_on_dask_worker_processes_equals_client_none(dask_cluster, tmp_path, tmp_path_factory):
    import distributed

    from stacchip_assets.training import select_chips, write_training_set

    from tests.unit.training.test_training import FORMATS, config, files_of, sample_index

    address, workers = dask_cluster
    index = sample_index(tmp_path_factory)
    with distributed.Client(address) as client:
        for fmt in FORMATS:
            cfg = config(format=fmt, sample_size=200)
            selection = select_chips(index, cfg)
            local = write_training_set(selection, cfg, tmp_path / f"local-{fmt}", chips_per_task=40)
            remote = write_training_set(selection, cfg, tmp_path / f"dask-{fmt}", client=client, chips_per_task=40)
            assert remote.equals(local)
            a, b = files_of(tmp_path / f"local-{fmt}"), files_of(tmp_path / f"dask-{fmt}")
            assert sorted(a) == sorted(b) and len(a) >= 10
            for name in a:
                assert a[name] == b[name], name
        pids = set(client.run(os.getpid).values())
        assert pids == {w.pid for w in workers}  # the two `dask worker` processes did the work
