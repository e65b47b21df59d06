"""Secrets never leave the resources: a whole run of the graph with S3 credentials (a SeaweedFS of
its own with a distinctive secret, SigV4 enforced) bound as EnvVars, COGs on a server that demands a
token (tests/support/http_server.py, signed by `tests.support.http_server:sign_with_test_token`), one item published
with unsigned hrefs, one that arrives already signed, and one already signed that points at a missing
file (its run fails). Then every captured log, every Dagster event record, every file under
DAGSTER_HOME (event log, run storage, compute logs), every materialization's metadata and every
stored object is searched for the secret and the token: none may hold them.

(Wrong credentials are covered by test_e2e_s3.py::test_wrong_credentials_say_so_and_never_show_the_secret.)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import pytest

from stacchip_assets.core.hrefs import strip_credentials
from stacchip_assets.dagster_defs import CollectionConfig, build_definitions, item_partition_key
from stacchip_assets.dagster_defs.resources import default_resources
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.index.reader import read_chip
from stacchip_assets.io.stac_source import SearchParams

from tests.conftest import require_servers
from tests.e2e.test_e2e_stac_api import ASSETS, IDS, S2, SETTINGS, sensor_of
from tests.support.dagster_support import QUIET
from tests.support.http_server import TEST_TOKEN, serve_directory
from tests.support.servers import collection_json, item_json, seaweedfs

SECRET = f"stacchip-very-secret-{uuid.uuid4().hex}"
ACCESS_KEY = "stacchip-secrets-key"
TOKEN_VALUE = TEST_TOKEN.split("sig=", 1)[1]  # "stacchip-test-token"
SIGNER = "tests.support.http_server:sign_with_test_token"


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture(scope="module")
def private_s3():
    require_servers("s3")
    folder = Path(tempfile.mkdtemp(prefix="stacchip-secrets-weed-"))
    try:
        with seaweedfs(folder / "data", access_key=ACCESS_KEY, secret_key=SECRET) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def all_texts_of(home: Path) -> list[tuple[str, str]]:
    """(path, text) of every file under a Dagster home, binary files decoded leniently."""
    return [(str(p), p.read_bytes().decode("utf-8", "replace")) for p in home.rglob("*") if p.is_file()]


def test_no_secret_or_token_in_logs_metadata_or_stored_objects(private_s3, stac_api, sample_catalog, tmp_path,
                                                              monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # whatever any library logs, at any level
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    private_s3.client().create_bucket(Bucket=bucket)
    collection = f"secrets-{uuid.uuid4().hex[:8]}"
    stac_api.create_collection(collection_json(sample_catalog, S2, collection))
    home = tmp_path / "dagster_home"
    home.mkdir()
    try:
        with serve_directory(str(sample_catalog.parent), require_token=TEST_TOKEN) as cogs:
            plain = item_json(sample_catalog, S2, IDS[0], collection, cogs, updated="2026-01-01T00:00:01Z", assets=ASSETS)
            signed = item_json(sample_catalog, S2, IDS[1], collection, cogs, updated="2026-01-01T00:00:02Z", assets=ASSETS)
            for asset in signed["assets"].values():  # as a provider that signs its hrefs (SAS) hands it out
                asset["href"] += f"?{TEST_TOKEN}"
            broken = item_json(sample_catalog, S2, IDS[2], collection, cogs, updated="2026-01-01T00:00:03Z", assets=ASSETS)
            for asset in broken["assets"].values():
                asset["href"] = asset["href"].replace(".tif", "-missing.tif") + f"?{TEST_TOKEN}"
            for data in (plain, signed, broken):
                stac_api.post_item(data)

            # credentials only through the environment, bound as EnvVars by the code location's resources
            for name, value in {
                "DAGSTER_HOME": str(home), "STACCHIP_STAC_API_URL": stac_api.url, "STACCHIP_STAC_CATALOG": "",
                "STACCHIP_STORAGE_BASE": f"s3://{bucket}/base", "STACCHIP_S3_ENDPOINT_URL": private_s3.endpoint,
                "STACCHIP_S3_REGION": private_s3.region, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "STACCHIP_HREF_SIGNER": SIGNER,
            }.items():
                monkeypatch.setenv(name, value)
            resources = default_resources()
            defs = build_definitions([CollectionConfig(collection=collection, search=SearchParams(), chips=SETTINGS)],
                                     resources=resources)
            with dg.instance_for_test(temp_dir=str(home)) as instance:
                run_ids = []
                items = defs.resolve_job_def("stac_items_job").execute_in_process(
                    partition_key=collection, instance=instance, run_config=QUIET)
                assert items.success
                run_ids.append(items.run_id)
                context = dg.build_sensor_context(instance=instance, cursor=None, definitions=defs, resources=resources)
                tick = sensor_of(defs)(context)
                instance.add_dynamic_partitions(tick.dynamic_partitions_requests[0].partitions_def_name,
                                                list(tick.dynamic_partitions_requests[0].partition_keys))
                outcomes = {}
                for request in tick.run_requests:
                    outcome = defs.resolve_job_def("chip_index_job").execute_in_process(
                        partition_key=request.partition_key, instance=instance, tags=request.tags, run_config=QUIET,
                        raise_on_error=False)
                    outcomes[request.partition_key] = outcome
                    run_ids.append(outcome.run_id)
                assert outcomes[item_partition_key(collection, IDS[0])].success
                assert outcomes[item_partition_key(collection, IDS[1])].success  # arrived signed: re-signed, read
                failed = outcomes[item_partition_key(collection, IDS[2])]
                assert not failed.success
                failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
                message = failure.event_specific_data.error.message
                assert "AssetReadError" in message and "-missing.tif" in message and "403" not in message, message
                combined = defs.resolve_job_def("combined_index_job").execute_in_process(instance=instance, run_config=QUIET)
                assert combined.success
                run_ids.append(combined.run_id)

                # what the instance holds: event records of every run, materialization metadata
                texts = [("event", repr(record)) for run_id in run_ids for record in instance.all_logs(run_id)]
                for key in (dg.AssetKey("stac_items"), dg.AssetKey("chip_index"), dg.AssetKey("combined_index")):
                    for record in instance.fetch_materializations(key, limit=100).records:
                        texts.append((f"metadata {key.to_user_string()}", repr(record.asset_materialization.metadata)))
                texts += [(f"run config {r.run_id}", json.dumps(r.run_config)) for r in instance.get_runs()]
                assert len([t for t in texts if t[0].startswith("metadata")]) >= 4

            # the pixels come back from the stored item (its hrefs stripped) because the signer signs again
            store = resources["storage"].process_config_and_initialize().storage()
            stored = store.read_item(collection, IDS[1])
            assert all("?" not in a.href and a.href == strip_credentials(a.href) for a in stored.assets.values())
            row = CombinedIndex(store).read().to_pylist()[0]
            with resources["storage"].process_config_and_initialize().gdal_env():
                assert set(read_chip(row, storage=store)) == set(ASSETS)
    finally:
        stac_api.delete_collection(collection)

    # every stored object: item JSON, item set, indexes, quicklooks, combined index
    client = private_s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(f"{IDS[1]}/stac_item.json") for k in keys) and any("combined" in k for k in keys)
    texts += [(f"s3 {k}", client.get_object(Bucket=bucket, Key=k)["Body"].read().decode("utf-8", "replace")) for k in keys]
    texts += all_texts_of(home)
    assert any("compute_logs" in name or "storage" in name for name, _ in texts)
    out, err = capfd.readouterr()
    texts += [("stdout", out), ("stderr", err), ("caplog", caplog.text)]
    assert len(caplog.records) > 0

    leaks = [(name, needle) for name, text in texts for needle in (SECRET, TOKEN_VALUE) if needle in text]
    assert leaks == []
    assert not [name for name, text in texts if re.search(r"(?i)\bsig=|X-Amz-Signature=", text)]
