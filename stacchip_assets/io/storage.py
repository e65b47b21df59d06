"""The storage base: where item JSON, per-item chip indexes, quicklooks and the combined index live.

A base is a local folder or ``s3://bucket/prefix`` (any S3-compatible endpoint, credentials passed
explicitly or found the usual way). The layout is stacchip's, so existing tooling reads ours::

    {base}/{collection}/{item_id}/stac_item.json                      the item as indexed
    {base}/index/{collection}/{item_id}/index_{item_id}.parquet       per-item chip index
    {base}/index/{collection}/{item_id}/quicklook_{item_id}.png       footprints coloured by cloud
    {base}/combined/{collection}/{item_id}.parquet                    combined index (see combine.py)
    {base}/item_sets/{collection}.json                                the items a search selected

Every write is atomic (:mod:`stacchip_assets.io.atomic`): local files are written to a temporary
file in the hidden folder ``{base}/.tmp/`` (same filesystem, so the rename over the target is atomic)
named ``{host}.{pid}.{random}.tmp``; a writer killed mid-write leaves its temporary there, and the next
Storage that writes to the base removes the temporaries whose writer process is dead (same host) or
that are older than a day (another host), without listing any other folder. S3 objects arrive in a
single PUT (:mod:`stacchip_assets.io.s3`). Readers skip every hidden path. Collection and item ids are validated with
:func:`stacchip_assets.core.ids.validate_id` before they become paths or keys.

Transient S3 errors are retried with backoff, a bounded number of attempts (``max_attempts``).
Item JSON is stored without credentials: signed asset/link hrefs lose their tokens
(:func:`stacchip_assets.core.hrefs.strip_credentials`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pystac

from stacchip_assets.core.hrefs import strip_credentials
from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import InvalidIdentifierError, StorageError
from stacchip_assets.io import settings
from stacchip_assets.io.atomic import (  # noqa: F401  (re-exported: the old home of these names)
    FOREIGN_TMP_MAX_AGE_SECONDS,
    TMP_DIR,
    atomic_path,
    atomic_write_bytes,
    remove_stale_temporaries,
    temp_name,
)
from stacchip_assets.io.geoparquet import encode_index, read_index, write_index
from stacchip_assets.io.s3 import (  # noqa: F401  (re-exported)
    DEFAULT_S3_MAX_ATTEMPTS,
    explain_s3_error,
    put_object,
    s3_client,
    s3_filesystem,
)

log = logging.getLogger(__name__)

#: Environment variable naming the default storage base.
STORAGE_BASE_ENV = settings.STORAGE_BASE_ENV
ITEM_FILENAME = "stac_item.json"
INDEX_DIR = "index"
COMBINED_DIR = "combined"
ITEM_SETS_DIR = "item_sets"
#: Top-level folders of the layout that therefore cannot be collection ids.
RESERVED_COLLECTIONS = frozenset({INDEX_DIR, COMBINED_DIR, ITEM_SETS_DIR})


def default_base() -> str:
    """``$STACCHIP_STORAGE_BASE``, else ``$DAGSTER_HOME/stacchip``, else ``./.dagster_home/stacchip``
    (read by `io.settings`, the one module that reads STACCHIP_* variables)."""
    return settings.default_base()


@dataclass(frozen=True)
class FileEntry:
    """One stored file: its key relative to the base, size in bytes and modification time (epoch s)."""

    key: str
    size: int
    mtime: float


class Storage:
    """A storage base (local folder or ``s3://bucket/prefix``) with the stacchip layout.

    Paths inside the base are *keys*: ``/``-separated, relative (``index/naip/x/index_x.parquet``).
    :meth:`uri` turns a key into what users see and what index rows record (an absolute local path
    or an ``s3://`` URI).
    """

    def __init__(
        self,
        base: str | os.PathLike | None = None,
        filesystem: pafs.FileSystem | None = None,
        *,
        s3_options: dict[str, Any] | None = None,
        max_attempts: int = DEFAULT_S3_MAX_ATTEMPTS,
    ) -> None:
        text = str(base) if base is not None else default_base()
        #: boto3 client options (endpoint_url, region_name, credentials) for S3 writes
        self.s3_options: dict[str, Any] = dict(s3_options or {})
        #: attempts of one S3 request on transient errors (boto3 and pyarrow, standard retry mode)
        self.max_attempts = max(1, int(max_attempts))
        self._s3_client = None
        self._tmp_ready = False
        if text.startswith("s3://"):
            parsed = urlparse(text)
            if not parsed.netloc:
                raise StorageError(f"storage base {text!r} has no bucket")
            self.scheme = "s3"
            self.fs = filesystem if filesystem is not None else s3_filesystem(max_attempts=self.max_attempts)
            self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            self.base = f"s3://{self.root}"
        elif "://" in text and not text.startswith("file://"):
            raise StorageError(f"unsupported storage base {text!r}: use a local folder or s3://bucket/prefix")
        else:
            path = Path(urlparse(text).path if text.startswith("file://") else text).expanduser().absolute()
            self.scheme = "file"
            self.fs = filesystem if filesystem is not None else pafs.LocalFileSystem()
            self.root = str(path)
            self.base = str(path)

    @classmethod
    def from_uri(
        cls,
        base: str | os.PathLike | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        max_attempts: int = DEFAULT_S3_MAX_ATTEMPTS,
    ) -> Storage:
        """A storage base; for ``s3://`` the endpoint, region and credentials are passed explicitly,
        and `max_attempts` bounds the attempts of one S3 request on transient errors."""
        text = str(base) if base is not None else default_base()
        if text.startswith("s3://"):
            fs = s3_filesystem(
                endpoint_url=endpoint_url, region=region, access_key_id=access_key_id,
                secret_access_key=secret_access_key, session_token=session_token, max_attempts=max_attempts,
            )
            options = {
                "endpoint_url": endpoint_url, "region_name": region, "aws_access_key_id": access_key_id,
                "aws_secret_access_key": secret_access_key, "aws_session_token": session_token,
            }
            return cls(text, fs, s3_options={k: v for k, v in options.items() if v}, max_attempts=max_attempts)
        return cls(text, max_attempts=max_attempts)

    def __repr__(self) -> str:
        return f"Storage({self.base!r})"

    def _error(self, what: str, exc: BaseException) -> StorageError:
        """A StorageError for `what`, saying so when S3 refused the credentials; never shows a secret."""
        return StorageError(f"{what}: {explain_s3_error(exc, self.s3_options)}")

    def asset_access(self, **options: Any):
        """How COG assets are read next to this base: an :class:`stacchip_assets.io.raster.AssetAccess` with
        the same S3 endpoint, region and credentials (``options`` adds ``gdal_options``,
        ``href_signer``, ``s3_unsigned``)."""
        from stacchip_assets.io.raster import AssetAccess

        return AssetAccess(
            s3_endpoint_url=self.s3_options.get("endpoint_url"),
            s3_region=self.s3_options.get("region_name"),
            access_key_id=self.s3_options.get("aws_access_key_id"),
            secret_access_key=self.s3_options.get("aws_secret_access_key"),
            session_token=self.s3_options.get("aws_session_token"),
            **options,
        )

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    # -- the layout ------------------------------------------------------------------------------
    @staticmethod
    def item_key(collection: str, item_id: str) -> str:
        if collection in RESERVED_COLLECTIONS:
            raise InvalidIdentifierError(f"collection id {collection!r} clashes with the {collection}/ folder of the storage layout")
        return f"{validate_id(collection, 'collection')}/{validate_id(item_id, 'item')}/{ITEM_FILENAME}"

    @staticmethod
    def item_set_key(collection: str) -> str:
        return f"{ITEM_SETS_DIR}/{validate_id(collection, 'collection')}.json"

    @staticmethod
    def index_key(collection: str, item_id: str) -> str:
        c, i = validate_id(collection, "collection"), validate_id(item_id, "item")
        return f"{INDEX_DIR}/{c}/{i}/index_{i}.parquet"

    @staticmethod
    def quicklook_key(collection: str, item_id: str) -> str:
        c, i = validate_id(collection, "collection"), validate_id(item_id, "item")
        return f"{INDEX_DIR}/{c}/{i}/quicklook_{i}.png"

    def path(self, key: str) -> str:
        """The filesystem path of a key (for pyarrow), refusing keys that climb out of the base."""
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise StorageError(f"invalid storage key {key!r}")
        return "/".join([self.root, *parts]) if parts else self.root

    def uri(self, key: str = "") -> str:
        """What users see for a key: an absolute local path, or ``s3://bucket/prefix/key``."""
        path = self.path(key)
        return path if self.is_local else f"s3://{path}"

    # -- bytes -----------------------------------------------------------------------------------
    def temp_dir(self) -> Path:
        """``{base}/.tmp`` of a local base (created), where writes in progress live. The first call
        of a Storage removes the temporaries left by writers that were killed (see the module doc)."""
        if not self.is_local:
            raise StorageError(f"{self.base} is not a local folder: S3 writes need no temporaries")
        folder = Path(self.root) / TMP_DIR
        if not self._tmp_ready:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
            self._tmp_ready = True
        return folder

    @contextlib.contextmanager
    def staged_path(self, key: str) -> Iterator[str]:
        """A temporary local path for `key` in ``{base}/.tmp``: write the file there inside the block;
        on a clean exit it is renamed over the key's file (atomic), on an error it is removed. For
        writers that want a path (pyarrow, zipfile); see :func:`stacchip_assets.io.atomic.atomic_path`."""
        if not self.is_local:
            raise StorageError(f"cannot stage {self.uri(key)}: not a local base")
        with atomic_path(self.path(key), tmp_dir=self.temp_dir()) as tmp:
            yield tmp

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically; returns the URI."""
        path = self.path(key)
        try:
            if self.is_local:
                atomic_write_bytes(path, data, tmp_dir=self.temp_dir())
            else:
                self._put_object(path, data)
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot write {self.uri(key)}", exc) from exc
        return self.uri(key)

    def _put_object(self, path: str, data: bytes) -> None:
        """One S3 PutObject (atomic: readers see the old object or the new one), see :func:`put_object`."""
        if self._s3_client is None:
            self._s3_client = s3_client(self.s3_options, self.max_attempts)
        try:
            put_object(self._s3_client, path, data)
        except OSError as exc:
            raise self._error(f"cannot write s3://{path}", exc.__cause__ or exc) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key)) as src:
                return src.read()
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri(key)} does not exist") from exc
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot read {self.uri(key)}", exc) from exc

    def write_json(self, key: str, value: Any) -> str:
        return self.write_bytes(key, (json.dumps(value, indent=1, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except ValueError as exc:
            raise StorageError(f"{self.uri(key)} is not valid JSON: {exc}") from exc

    def info(self, key: str) -> FileEntry | None:
        """Size and mtime of a stored file, or None if it does not exist."""
        try:
            info = self.fs.get_file_info(self.path(key))
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot stat {self.uri(key)}", exc) from exc
        if info.type != pafs.FileType.File:
            return None
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return FileEntry(key=key, size=int(info.size or 0), mtime=mtime)

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def delete(self, key: str) -> bool:
        """Delete one file; returns False if it did not exist."""
        try:
            self.fs.delete_file(self.path(key))
            return True
        except FileNotFoundError:
            return False
        except (OSError, pa.ArrowException) as exc:
            if self.info(key) is None:
                return False
            raise self._error(f"cannot delete {self.uri(key)}", exc) from exc

    def copy(self, src_key: str, dst_key: str) -> str:
        """Copy a stored file atomically (server-side on S3, temp file + rename locally)."""
        if self.is_local:
            return self.write_bytes(dst_key, self.read_bytes(src_key))
        try:
            self.fs.copy_file(self.path(src_key), self.path(dst_key))
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot copy {self.uri(src_key)} to {self.uri(dst_key)}", exc) from exc
        return self.uri(dst_key)

    def list_files(self, prefix: str = "", suffix: str = "") -> Iterator[FileEntry]:
        """Every file under ``prefix`` (recursive) whose name ends with ``suffix``; hidden files and
        folders (temporary writes) are skipped."""
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot list {self.uri(prefix)}", exc) from exc
        root = self.root.rstrip("/") + "/"
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.endswith(suffix):
                continue
            key = info.path[len(root):] if info.path.startswith(root) else info.path
            if any(part.startswith((".", "_")) for part in key.split("/")):
                continue  # hidden: temporaries ({base}/.tmp/, older .{name}.*.tmp siblings), _SUCCESS...
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            yield FileEntry(key=key, size=int(info.size or 0), mtime=mtime)

    # -- items and indexes -----------------------------------------------------------------------
    def write_item(self, item: pystac.Item, collection: str | None = None) -> str:
        """Store an item's JSON (asset hrefs made absolute, self link = its stored URI); returns the URI.

        Signed hrefs are stored without their tokens (SAS ``sig``/``se``..., ``X-Amz-*``, ``token``,
        ``key``...; see :func:`stacchip_assets.core.hrefs.strip_credentials`): tokens expire and must not be
        kept; a signer (``href_signer``) signs them again when the pixels are read."""
        collection = collection or item.collection_id
        if not collection:
            raise StorageError("the item has no collection id; pass collection=", item_id=item.id)
        key = self.item_key(collection, item.id)
        data = item.to_dict(include_self_link=False, transform_hrefs=False)
        for asset in data.get("assets", {}).values():
            href = asset.get("href")
            if href and "://" not in href and not os.path.isabs(href):
                source = item.get_self_href()
                if source is None:
                    raise StorageError(f"asset href {href!r} is relative and the item has no self href", item_id=item.id)
                asset["href"] = pystac.utils.make_absolute_href(href, source)
        data["links"] = [link for link in data.get("links", []) if link.get("rel") not in ("self", "root", "parent", "collection")]
        stripped = _strip_hrefs(data.get("assets", {})) + _strip_hrefs(data["links"])
        if stripped:
            log.info("item %s: credentials (signed-URL tokens) removed from %d hrefs before storing it", item.id, stripped)
        data["links"].append({"rel": "self", "href": self.uri(key), "type": "application/geo+json"})
        return self.write_bytes(key, (json.dumps(data, indent=1) + "\n").encode())

    def read_item(self, collection: str, item_id: str) -> pystac.Item:
        key = self.item_key(collection, item_id)
        item = pystac.Item.from_dict(json.loads(self.read_bytes(key)), preserve_dict=False)
        item.set_self_href(self.uri(key))
        return item

    def write_index(self, table: pa.Table, collection: str, item_id: str) -> str:
        """Write a per-item chip index (GeoParquet) atomically; returns its URI."""
        key = self.index_key(collection, item_id)
        if self.is_local:
            return write_index(table, self.path(key), tmp_dir=self.temp_dir())
        try:
            data = encode_index(table)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot encode the index of {collection}/{item_id}: {exc}", item_id=item_id) from exc
        return self.write_bytes(key, data)

    def read_index(self, collection: str, item_id: str) -> pa.Table:
        key = self.index_key(collection, item_id)
        return read_index(self.path(key), filesystem=self.fs)

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(self.path(key), filesystem=self.fs, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot read {self.uri(key)}", exc) from exc

    def parquet_num_rows(self, key: str) -> int:
        """Row count from the Parquet footer only (no data pages read)."""
        try:
            with self.fs.open_input_file(self.path(key)) as src:
                return pq.ParquetFile(src).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"cannot read the footer of {self.uri(key)}", exc) from exc

    def indexed_items(self) -> Iterator[tuple[str, str, FileEntry]]:
        """(collection, item_id, file) of every per-item index under ``{base}/index``."""
        for entry in self.list_files(INDEX_DIR, suffix=".parquet"):
            parts = entry.key.split("/")
            if len(parts) == 4 and parts[3] == f"index_{parts[2]}.parquet":
                yield parts[1], parts[2], entry


def _strip_hrefs(value: Any) -> int:
    """Strip credentials from every ``href`` inside `value` (assets with their alternates, links), in
    place; returns how many hrefs changed."""
    changed = 0
    if isinstance(value, dict):
        for name, inner in value.items():
            if name == "href" and isinstance(inner, str):
                clean = strip_credentials(inner)
                if clean != inner:
                    value[name] = clean
                    changed += 1
            else:
                changed += _strip_hrefs(inner)
    elif isinstance(value, list):
        changed += sum(_strip_hrefs(v) for v in value)
    return changed
