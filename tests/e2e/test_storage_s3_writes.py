"""Writes of a storage base on S3 (SeaweedFS): one PUT through the atomic-write path of io/storage +
io/s3, and a refused write that says why without showing the secret."""

from __future__ import annotations

import uuid

import pytest

from stacchip_assets.errors import StorageError
from stacchip_assets.io.storage import Storage

WRONG_SECRET = "wrong-secret-3f9a1c0d7e"


def _storage(s3_server, bucket: str, secret: str | None = None) -> Storage:
    return Storage.from_uri(f"s3://{bucket}/base", endpoint_url=s3_server.endpoint, region=s3_server.region,
                            access_key_id=s3_server.access_key, secret_access_key=secret or s3_server.secret_key)


def test_s3_writes_are_one_put_and_refused_credentials_are_named(s3_server):
    bucket = f"writes-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    storage = _storage(s3_server, bucket)
    uri = storage.write_bytes("a/b.json", b'{"v": 1}')
    assert uri == f"s3://{bucket}/base/a/b.json"
    assert storage.read_json("a/b.json") == {"v": 1}
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["base/a/b.json"]  # no temporary object, ever

    with pytest.raises(StorageError, match=r"S3 refused the credentials \(SignatureDoesNotMatch\)") as refused:
        _storage(s3_server, bucket, WRONG_SECRET).write_bytes("a/b.json", b"{}")
    assert f"access key {s3_server.access_key!r}" in str(refused.value)
    assert WRONG_SECRET not in str(refused.value)
    assert storage.read_json("a/b.json") == {"v": 1}
