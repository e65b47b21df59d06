"""S3 access of a storage base: pyarrow filesystem, boto3 PUTs, and S3 failures explained in words.

Transient S3 errors (5xx, throttling, dropped connections) are retried with backoff, a bounded
number of attempts (``max_attempts``, boto3's and pyarrow's "standard" retry modes).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from stacchip_assets.errors import StorageError

#: Attempts of one S3 request (the first included) on transient errors, with exponential backoff.
DEFAULT_S3_MAX_ATTEMPTS = 5


def _endpoint_parts(endpoint_url: str) -> tuple[str, str]:
    """("host:port", "http" | "https") of an endpoint URL; a bare host:port means https."""
    if "://" not in endpoint_url:
        return endpoint_url.rstrip("/"), "https"
    parsed = urlparse(endpoint_url)
    return parsed.netloc, parsed.scheme or "https"


def s3_filesystem(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    max_attempts: int = DEFAULT_S3_MAX_ATTEMPTS,
) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem; unset values fall back to the AWS environment/config chain. Transient
    errors are retried (AWS standard strategy, `max_attempts` attempts in all)."""
    options: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, int(max_attempts)))}
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_url:
        options["endpoint_override"], options["scheme"] = _endpoint_parts(endpoint_url)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if access_key_id and secret_access_key:
        options["access_key"] = access_key_id
        options["secret_key"] = secret_access_key
        if session_token:
            options["session_token"] = session_token
    try:
        return pafs.S3FileSystem(**options)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StorageError(f"cannot set up S3 access (endpoint {endpoint_url or 'AWS default'}): {exc}") from exc


_REFUSED_CODES = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ACCESS_DENIED", "ExpiredToken",
                  "InvalidToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed")


def explain_s3_error(exc: BaseException, s3_options: dict[str, Any] | None = None) -> str:
    """The cause of an S3 failure in words: when the server refused the credentials, say so and name the
    access key and endpoint (never the secret, which is redacted should the cause contain it)."""
    options = s3_options or {}
    text = str(exc)
    code = None
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
    if code is None:
        code = next((c for c in _REFUSED_CODES if c in text), None)
    if code in _REFUSED_CODES:
        key = options.get("aws_access_key_id")
        endpoint = options.get("endpoint_url") or "the AWS default endpoint"
        who = f"access key {key!r}" if key else "the credentials found in the environment"
        text = (f"S3 refused the credentials ({code}) for {who} at {endpoint}: wrong access key or secret "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or no permission. Cause: {text}")
    for secret in (options.get("aws_secret_access_key"), options.get("aws_session_token")):
        if secret:
            text = text.replace(secret, "<secret>")
    return text


def s3_client(s3_options: dict[str, Any], max_attempts: int = DEFAULT_S3_MAX_ATTEMPTS) -> Any:
    """A boto3 S3 client with the given options (endpoint_url, region_name, credentials) and the
    standard retry mode; `max_attempts` counts the first attempt."""
    import boto3
    from botocore.config import Config

    # total_max_attempts counts the first attempt (botocore's "max_attempts" would count retries only)
    retries = Config(retries={"mode": "standard", "total_max_attempts": max(1, int(max_attempts))})
    return boto3.client("s3", config=retries, **s3_options)


def put_object(client: Any, path: str, data: bytes) -> None:
    """Write ``bucket/key`` in one S3 PutObject: readers see the old object or the new one, never half.
    boto3, not pyarrow: pyarrow's output stream uses multipart uploads, which some S3-compatible
    servers mishandle. A boto3 failure is raised as an OSError whose ``__cause__`` is the original."""
    import botocore.exceptions

    bucket, _, object_key = path.partition("/")
    try:
        client.put_object(Bucket=bucket, Key=object_key, Body=data)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise OSError(f"cannot write s3://{path}: {exc}") from exc
