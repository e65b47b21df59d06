"""The production configurations of deploy/ load and work: each dagster.yaml variant on a real
(throwaway) PostgreSQL, the executor chosen by STACCHIP_EXECUTOR, and a partitioned run against the
PostgreSQL-backed instance."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import EXECUTOR_ENV, EXECUTORS, build_definitions, executor_from_env
from stacchip_assets.errors import StacchipError

from tests.conftest import PROJECT, require_servers
from tests.support.dagster_support import ALL_KEYS, Graph, shared_sample

DEPLOY = PROJECT / "deploy"
VARIANTS = ("postgres", "k8s", "celery")
JOBS = ("stac_items_job", "chip_index_job", "combined_index_job", "training_job")

#: A kubeconfig that names a cluster nobody serves: the K8sRunLauncher reads it when the instance
#: starts and would only contact the cluster to launch a run.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9"}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody, namespace: stacchip}
current-context: nowhere
users:
- name: nobody
  user: {token: not-a-token}
"""


@pytest.fixture(scope="module")
def postgres():
    require_servers("postgres")  # a plain PostgreSQL cluster; PostGIS is not needed here
    from tests.support.servers import postgres_cluster

    with postgres_cluster() as server:
        yield server


@pytest.fixture()
def deploy_env(postgres, tmp_path, monkeypatch) -> dict[str, str]:
    """What an operator sets for the variants: the database URL, a kubeconfig, the ConfigMap and namespace."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    env = {"DAGSTER_PG_URL": postgres.url, "KUBECONFIG": str(kubeconfig),
           "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "stacchip-instance", "DAGSTER_K8S_JOB_NAMESPACE": "stacchip"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def home_with(variant: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEPLOY / f"dagster.{variant}.yaml", folder / "dagster.yaml")
    return folder


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.e2e
def test_variant_loads(variant, deploy_env, tmp_path):
    home = home_with(variant, tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "dagster", "instance", "info"], capture_output=True, text=True,
                            env=dict(os.environ, DAGSTER_HOME=str(home)), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in ("run_storage: PostgresRunStorage", "event_log_storage: PostgresEventLogStorage",
                 "schedule_storage: PostgresScheduleStorage"):
        assert line in out
    launcher = {"k8s": "class: K8sRunLauncher"}.get(variant, "class: DefaultRunLauncher")
    assert launcher in out

    # the same file in process: the objects it configures, the queue and the combine limit
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_launcher).__name__ == ("K8sRunLauncher" if variant == "k8s" else "DefaultRunLauncher")
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs >= 8
        assert {"key": "stacchip/role", "value": "combine", "limit": 1} in queue.tag_concurrency_limits
        assert instance.get_settings("sensors")["use_threads"] is True
        if variant == "k8s":
            assert instance.run_launcher.job_namespace == "stacchip"
            assert instance.run_launcher.instance_config_map == "stacchip-instance"
    finally:
        instance.dispose()


@pytest.mark.e2e
def test_k8s_variant_without_a_kubeconfig_fails_at_load(deploy_env, tmp_path):
    home = home_with("k8s", tmp_path / "home")
    env = dict(os.environ, DAGSTER_HOME=str(home), KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "dagster", "instance", "info"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode != 0
    assert "kube-config" in result.stderr or "kubeconfig" in result.stderr.lower()


@pytest.mark.parametrize("executor", ["celery", "k8s"])
@pytest.mark.e2e
def test_definitions_validate_with_a_distributed_executor(executor, deploy_env, tmp_path, monkeypatch):
    home = home_with("k8s" if executor == "k8s" else "celery", tmp_path / "home")
    env = dict(os.environ, DAGSTER_HOME=str(home), **{EXECUTOR_ENV: executor})
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w",
                             str(PROJECT / "workspace.yaml")], capture_output=True, text=True, env=env,
                            cwd=PROJECT, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Validation successful" in result.stdout + result.stderr

    monkeypatch.setenv(EXECUTOR_ENV, executor)
    defs = build_definitions()
    for job in JOBS:
        assert defs.resolve_job_def(job).executor_def.name == executor


def test_default_executor_is_in_process(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    defs = build_definitions()
    for job in JOBS:
        assert defs.resolve_job_def(job).executor_def is dg.in_process_executor
    monkeypatch.setenv(EXECUTOR_ENV, " Multiprocess ")
    assert build_definitions().resolve_job_def("chip_index_job").executor_def is dg.multiprocess_executor
    assert set(EXECUTORS) == {"in_process", "multiprocess", "celery", "k8s"}


def test_unknown_executor_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(EXECUTOR_ENV, "dask")
    with pytest.raises(StacchipError, match=r"STACCHIP_EXECUTOR='dask' is not an executor; choose one of "
                                            r"in_process, multiprocess, celery, k8s"):
        build_definitions()


@pytest.mark.parametrize("executor, module", [("celery", "dagster_celery"), ("k8s", "dagster_k8s")])
def test_missing_executor_package_is_a_clear_error(executor, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the deploy extra sees
    with pytest.raises(StacchipError, match=rf"STACCHIP_EXECUTOR={executor} needs the {module.replace('_', '-')} "
                                            r"package.*pip install 'stacchip-assets\[deploy\]'"):
        executor_from_env(executor)


@pytest.mark.e2e
def test_partitioned_run_on_the_postgres_instance(deploy_env, postgres, tmp_path, tmp_path_factory):
    """One chip_index partition of the sample catalog materialized with the production instance
    configuration: the run, its events and the partition are in PostgreSQL."""
    import psycopg

    home = home_with("postgres", tmp_path / "home")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        graph = Graph(shared_sample(tmp_path_factory), tmp_path / "base", instance)
        key = ALL_KEYS[0]
        graph.add_partitions([key])
        result = graph.index(key)
        assert result.success
        assert result.dagster_run.tags["dagster/partition"] == key
        materialization = graph.latest("chip_index", key)
        assert materialization is not None and materialization.metadata["dagster/row_count"].value > 0
        assert instance.get_materialized_partitions(dg.AssetKey("chip_index")) == {key}
        run_id = result.run_id
    finally:
        instance.dispose()
    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname=postgres.dbname) as conn:
        status = conn.execute("select status from runs where run_id = %s", [run_id]).fetchone()
        partitions = conn.execute("select partition from dynamic_partitions").fetchall()
        events = conn.execute("select count(*) from event_logs where run_id = %s", [run_id]).fetchone()
    assert status == ("SUCCESS",)
    assert (key,) in partitions
    assert events[0] > 5
