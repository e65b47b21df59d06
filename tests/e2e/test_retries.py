"""Transient errors are retried with backoff, a bounded number of times, on real servers behind a real
fault-injecting proxy (tests/support/fault_proxy.py): the STAC API (stac-fastapi-pgstac, through pystac-client)
and S3 (SeaweedFS, SigV4: the proxy forwards the Host header the client signed, so signatures verify).
Attempts are counted by the proxy; nothing here measures time.
"""

from __future__ import annotations

import re
import uuid

import pytest
import urllib3

from stacchip_assets.dagster_defs import StacSourceResource, StorageResource
from stacchip_assets.errors import StacSourceError, StorageError
from stacchip_assets.io.stac_source import RetrySettings, StacApiSource
from stacchip_assets.io.storage import Storage

from tests.e2e.test_e2e_stac_api import ASSETS, IDS, S2
from tests.support.fault_proxy import fault_proxy
from tests.support.servers import collection_json, item_json

FAST = RetrySettings(max_retries=3, backoff_seconds=0.01, max_wait_seconds=0.05)


@pytest.fixture()
def collection(request, stac_api, sample_catalog, cog_server):
    name = "retry-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:36].strip("-") + "-" + uuid.uuid4().hex[:6]
    stac_api.create_collection(collection_json(sample_catalog, S2, name))
    for n, item_id in enumerate(IDS):
        stac_api.post_item(item_json(sample_catalog, S2, item_id, name, cog_server, updated=f"2026-01-01T00:00:0{n}Z",
                                     assets=ASSETS))
    try:
        yield name
    finally:
        stac_api.delete_collection(name)


def test_a_stac_search_succeeds_after_transient_failures(stac_api, collection):
    with fault_proxy(stac_api.url, seed=0) as proxy:
        proxy.configure(fail_next=2, statuses=[503])  # the landing page fails twice, then answers
        source = StacApiSource(proxy.url, page_size=2, retry=FAST)
        assert sorted(i.id for i in source.search(collection)) == sorted(IDS)
        stats = proxy.stats()
        assert stats["failed"] == 2 and stats["requests"] == stats["forwarded"] + 2

        # POST /search itself (pystac-client searches with POST), and 429 / 502 / a dropped connection
        for faults in ({"statuses": [502]}, {"statuses": [429]}, {"drop_rate": 1.0}):
            before = proxy.stats()
            proxy.configure(**{"fail_next": 2, "only_paths": ["/search"], **faults} if "statuses" in faults
                            else {"only_paths": ["/search"], **faults})
            if "drop_rate" in faults:  # drop everything, then let the third attempt through
                source_once = StacApiSource(proxy.url, page_size=10, retry=FAST)
                source_once.client()  # the landing page is not under /search: answered
                with pytest.raises(StacSourceError):
                    source_once.search(collection)
                after = proxy.stats()
                assert after["dropped"] - before["dropped"] == FAST.max_retries + 1
                continue
            assert sorted(i.id for i in StacApiSource(proxy.url, page_size=10, retry=FAST).search(collection)) == sorted(IDS)
            after = proxy.stats()
            assert after["failed"] - before["failed"] == 2, (faults, after)


def test_a_stac_api_that_keeps_failing_is_a_stac_source_error_after_bounded_attempts(stac_api, collection):
    with fault_proxy(stac_api.url, seed=1) as proxy:
        proxy.configure(fail_rate=1.0, statuses=[503])
        source = StacApiSource(proxy.url, retry=FAST)
        with pytest.raises(StacSourceError) as excinfo:
            source.search(collection)
        message = str(excinfo.value)
        assert message.startswith(f"STAC API {proxy.url}: cannot open the API: the server answered HTTP 503"), message
        assert proxy.stats()["requests"] == FAST.max_retries + 1

        # the search itself, retried as often, then the cause
        proxy.configure(fail_rate=1.0, statuses=[500], only_paths=["/search"])
        before = proxy.stats()
        with pytest.raises(StacSourceError, match=rf"search of collection '{collection}' failed: the server answered HTTP 500"):
            StacApiSource(proxy.url, retry=FAST).search(collection)
        after = proxy.stats()
        assert after["failed"] - before["failed"] == FAST.max_retries + 1  # every attempt of POST /search
        assert after["requests"] - before["requests"] == after["forwarded"] - before["forwarded"] + FAST.max_retries + 1

        # no retries at all when configured so, through the resource
        resource = StacSourceResource(api_url=proxy.url, max_retries=0)
        proxy.configure(fail_rate=1.0, statuses=[503])
        before = proxy.stats()["requests"]
        with pytest.raises(StacSourceError, match="HTTP 503"):
            resource.source().search(collection)
        assert proxy.stats()["requests"] - before == 1

        # a dropped connection says so
        proxy.configure(drop_rate=1.0)
        before = proxy.stats()["requests"]
        with pytest.raises(StacSourceError, match="not reachable"):
            StacApiSource(proxy.url, retry=FAST).search(collection)
        assert proxy.stats()["requests"] - before == FAST.max_retries + 1


def test_retry_after_is_honoured_but_capped():
    retry = RetrySettings(max_wait_seconds=2.5).urllib3_retry()
    for value, expected in (("1", 1.0), ("3600", 2.5)):
        response = urllib3.HTTPResponse(body=b"", headers={"Retry-After": value}, status=429, preload_content=False)
        assert retry.get_retry_after(response) == expected
    assert retry.is_retry("POST", 503, has_retry_after=False) and retry.is_retry("GET", 429, has_retry_after=True)
    assert not retry.is_retry("POST", 400, has_retry_after=False) and not retry.is_retry("PUT", 503, has_retry_after=False)


# -- S3 ------------------------------------------------------------------------------------------

@pytest.fixture()
def bucket(request, s3_server) -> str:
    name = f"retry-{uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:10]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def proxied_storage(s3_server, proxy, bucket: str, attempts: int) -> Storage:
    return Storage.from_uri(f"s3://{bucket}/base", endpoint_url=proxy.url, region=s3_server.region,
                            access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key,
                            max_attempts=attempts)


def test_s3_writes_and_reads_succeed_after_transient_failures(s3_server, bucket):
    with fault_proxy(s3_server.endpoint, seed=2) as proxy:
        store = proxied_storage(s3_server, proxy, bucket, attempts=4)
        proxy.configure(fail_next=2, statuses=[503])
        assert store.write_bytes("a/one.json", b'{"n": 1}') == f"s3://{bucket}/base/a/one.json"
        stats = proxy.stats()
        assert stats["failed"] == 2 and stats["forwarded"] == 1  # the third PUT, signed for the proxy's host, verified
        body = s3_server.client().get_object(Bucket=bucket, Key="base/a/one.json")["Body"].read()
        assert body == b'{"n": 1}'

        # pyarrow (listings, reads), AWS standard retry strategy
        proxy.configure(fail_next=2, statuses=[500])
        assert [e.key for e in store.list_files("a")] == ["a/one.json"]
        assert proxy.stats()["failed"] == 4
        proxy.configure(fail_next=2, statuses=[503])
        assert store.read_bytes("a/one.json") == b'{"n": 1}'
        assert proxy.stats()["failed"] == 6

        # the same through the Dagster resource's setting
        resource = StorageResource(base=f"s3://{bucket}/base", s3_endpoint_url=proxy.url, s3_region=s3_server.region,
                                   s3_access_key_id=s3_server.access_key, s3_secret_access_key=s3_server.secret_key,
                                   s3_max_attempts=3)
        proxy.configure(fail_next=2, statuses=[502])
        resource.storage().write_bytes("a/two.json", b"2")
        assert proxy.stats()["failed"] == 8


def test_an_s3_endpoint_that_drops_everything_is_a_storage_error_naming_the_uri(s3_server, bucket):
    with fault_proxy(s3_server.endpoint, seed=3) as proxy:
        store = proxied_storage(s3_server, proxy, bucket, attempts=3)
        proxy.configure(drop_rate=1.0)
        with pytest.raises(StorageError) as excinfo:
            store.write_bytes("a/lost.json", b"x")
        message = str(excinfo.value)
        assert message.startswith(f"cannot write s3://{bucket}/base/a/lost.json: "), message
        assert s3_server.secret_key not in message
        assert proxy.stats()["dropped"] == 3  # max_attempts, then the error

        before = proxy.stats()["dropped"]
        with pytest.raises(StorageError, match=rf"s3://{bucket}/base/a/lost\.json"):
            store.read_bytes("a/lost.json")
        assert 1 <= proxy.stats()["dropped"] - before <= 3
    assert "base/a/lost.json" not in {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
