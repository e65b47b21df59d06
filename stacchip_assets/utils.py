"""Load indexers from stacchip's bucket layout: `{base}/{platform}/{item_id}/stac_item.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pystac

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StorageError
from stacchip_assets.index.chip_indexer import ChipIndexer, Indexer


def load_indexer_local(mountpath: str | Path, platform: str, item_id: str, **indexer_options) -> ChipIndexer:
    """The indexer of an item stored under a local folder (stacchip's layout)."""
    path = Path(mountpath) / validate_id(platform, "collection") / validate_id(item_id, "item") / "stac_item.json"
    try:
        item = pystac.Item.from_file(str(path))
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot load item JSON {path}: {exc}", item_id=item_id) from exc
    return Indexer(item, **indexer_options)


def load_indexer_s3(bucket: str, platform: str, item_id: str, prefix: str = "", **indexer_options) -> ChipIndexer:
    """The indexer of an item stored in an S3 bucket (stacchip's layout); boto3 finds credentials
    and the endpoint (`AWS_ENDPOINT_URL`) the usual way."""
    import boto3
    import botocore.exceptions

    key = "/".join(p for p in (prefix.strip("/"), validate_id(platform, "collection"), validate_id(item_id, "item"), "stac_item.json") if p)
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"cannot load item JSON s3://{bucket}/{key}: {exc}", item_id=item_id) from exc
    item = pystac.Item.from_dict(json.loads(body))
    # A self link (not set_self_href, which would rewrite absolute asset paths) so relative asset
    # hrefs resolve against the bucket and index rows record where the item lives.
    item.links = [link for link in item.links if link.rel != "self"]
    item.add_link(pystac.Link(rel="self", target=f"s3://{bucket}/{key}", media_type=pystac.MediaType.JSON))
    return Indexer(item, **indexer_options)
