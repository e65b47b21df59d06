"""Dagster resources: the STAC source, the storage base and the chip settings.

Every field has a working default, so the code location runs with no configuration at all (the
embedded sample catalog, a storage base under the Dagster home, the presets' chip settings).
`default_resources()` binds fields to environment variables when they are set:

==============================  =============================================================
STACCHIP_STAC_API_URL           STAC API to search (pystac-client)
STACCHIP_STAC_CATALOG           static catalog (path or URL of catalog.json) instead
STACCHIP_STAC_MAX_RETRIES       retries of a failed STAC API request (default 3, with backoff)
STACCHIP_MAX_ITEMS_PER_TICK     items a sensor tick requests per collection (default 10,000)
STACCHIP_STORAGE_BASE           local folder or s3://bucket/prefix (default $DAGSTER_HOME/stacchip)
STACCHIP_S3_ENDPOINT_URL        S3-compatible endpoint, e.g. http://127.0.0.1:9000
STACCHIP_S3_REGION              region
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   credentials (otherwise the usual AWS chain)
AWS_SESSION_TOKEN               session token of temporary credentials
STACCHIP_GDAL_OPTIONS           JSON object of extra GDAL options for reading COGs, e.g.
                                {"AWS_NO_SIGN_REQUEST": "YES"} or {"GDAL_HTTP_MAX_RETRY": "5"}
STACCHIP_HREF_SIGNER            "module:function" signing asset hrefs, e.g. planetary_computer:sign
STACCHIP_IMAGE_URL_PREFIX       http(s) URL serving the storage base: metadata images show inline
STACCHIP_SENSOR_INTERVAL_SECONDS  seconds between STAC polls of the item sensor (default 60)
STACCHIP_CHIP_SIZE              chip size for every collection (default: the preset's)
STACCHIP_CHIP_MAX_NODATA        max nodata fraction for every collection (default: the preset's)
==============================  =============================================================
"""


import contextlib
from collections.abc import Iterator
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.demo.sample_data import ensure_sample_catalog
from stacchip_assets.index.item_index import ChipSettings
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.raster import AssetAccess, gdal_env
from stacchip_assets.io.settings import RESOURCE_ENV, Settings, load_settings
from stacchip_assets.io.stac_source import RetrySettings, StacSource, open_source
from stacchip_assets.io.storage import DEFAULT_S3_MAX_ATTEMPTS, Storage, default_base


class StacSourceResource(ConfigurableResource):
    """Where items come from: a STAC API (`api_url`) or a static catalog (`catalog_path`);
    with neither, the embedded sample catalog (generated on first use, no network needed)."""

    api_url: str | None = Field(default=None, description="STAC API root URL (searched with pystac-client)")
    catalog_path: str | None = Field(default=None, description="path or URL of a static catalog.json")
    page_size: int = Field(default=100, description="items per page of an API search")
    timeout_seconds: float = Field(default=30.0, description="HTTP timeout of API requests")
    max_retries: int = Field(
        default=3, description="retries of an API request (GET or POST search) after connection errors, "
        "timeouts, 429 and 5xx, with exponential backoff; 0: none",
    )
    retry_backoff_seconds: float = Field(default=0.5, description="wait before the first retry, doubled for each next one")
    retry_max_wait_seconds: float = Field(
        default=10.0, description="longest single wait between retries (also caps a server's Retry-After)"
    )
    max_items_per_tick: int = Field(
        default=10_000, description="items a sensor tick requests per collection (in runs of up to "
        "STACCHIP_BACKFILL_PARTITIONS_PER_RUN items; 10,000 new items take one tick of a few seconds)",
    )
    allowed_href_schemes: list[str] = Field(
        default=["http", "https", "s3"], description="URL schemes an item's asset hrefs may use"
    )
    allowed_local_roots: list[str] | None = Field(
        default=None,
        description="folders whose files asset hrefs may name (default: the static catalog's folder, or none for an API)",
    )

    allowed_href_hosts: list[str] | None = Field(
        default=None,
        description="hosts http(s) asset hrefs may name ('.example.com' admits subdomains; default: any host)",
    )

    def href_policy(self) -> HrefPolicy:
        """What an item's asset hrefs may point at; items are untrusted input."""
        roots = self.allowed_local_roots
        if roots is None:
            roots = []
            if not self.api_url:
                catalog = self.catalog_path or str(ensure_sample_catalog())
                if "://" not in catalog:
                    roots.append(str(Path(catalog).resolve().parent))
        return HrefPolicy(schemes=tuple(s.lower() for s in self.allowed_href_schemes), local_roots=tuple(roots),
                          allowed_hosts=tuple(self.allowed_href_hosts or ()))

    def retry(self) -> RetrySettings:
        return RetrySettings(max_retries=self.max_retries, backoff_seconds=self.retry_backoff_seconds,
                             max_wait_seconds=self.retry_max_wait_seconds)

    def source(self) -> StacSource:
        if self.api_url:
            return open_source(api_url=self.api_url, page_size=self.page_size, timeout=self.timeout_seconds,
                               retry=self.retry())
        return open_source(catalog_path=self.catalog_path or str(ensure_sample_catalog()))

    def describe(self) -> str:
        if self.api_url:
            return f"STAC API {self.api_url}"
        return f"static catalog {self.catalog_path}" if self.catalog_path else "embedded sample catalog"


class StorageResource(ConfigurableResource):
    """The storage base, a local folder (default `$DAGSTER_HOME/stacchip`) or `s3://bucket/prefix`, and
    how COG assets are read: the same S3 endpoint and credentials, GDAL's network settings and an
    optional href signer, applied around indexing and chipping with :meth:`gdal_env`."""

    base: str | None = Field(default=None, description="local folder or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint URL (storage and s3:// assets)")
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_session_token: str | None = None
    s3_max_attempts: int = Field(
        default=DEFAULT_S3_MAX_ATTEMPTS, description="attempts of one S3 request of the storage base (the first "
        "included) on 5xx, throttling and dropped connections, with backoff (boto3/pyarrow standard retry mode)",
    )
    gdal_options: dict[str, str] = Field(
        default_factory=dict,
        description="extra GDAL configuration options for reading COG assets (override the defaults of "
        "stacchip_assets.io.raster.DEFAULT_GDAL_OPTIONS), e.g. {'AWS_NO_SIGN_REQUEST': 'YES'}",
    )
    href_signer: str | None = Field(
        default=None, description="'module:function' applied to every asset href before it is opened, "
        "e.g. 'planetary_computer:sign' (pip install planetary-computer)",
    )
    image_url_prefix: str | None = Field(
        default=None, description="http(s) URL under which the storage base is served (a public bucket, a "
        "static file server): the quicklook, gallery and coverage PNGs in the metadata then link there and "
        "show inline in the UI (without it they are inlined as data: URIs, behind '[Show Markdown]')",
    )

    def storage(self) -> Storage:
        return Storage.from_uri(
            self.base or default_base(),
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key,
            session_token=self.s3_session_token,
            max_attempts=self.s3_max_attempts,
        )

    def asset_access(self) -> AssetAccess:
        """How asset hrefs are reached (GDAL options, S3 endpoint and credentials, signer)."""
        return AssetAccess(
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key,
            session_token=self.s3_session_token,
            gdal_options=dict(self.gdal_options),
            href_signer=self.href_signer,
        )

    @contextlib.contextmanager
    def gdal_env(self) -> Iterator[AssetAccess]:
        """Everything opened and read inside uses this resource's GDAL settings, credentials and signer."""
        with gdal_env(self.asset_access()) as access:
            yield access


class ChipSettingsResource(ConfigurableResource):
    """Chip settings; unset fields keep each collection's preset values."""

    chip_size: int | None = Field(default=None, description="chip size in pixels, for every collection")
    chip_max_nodata: float | None = Field(default=None, description="drop chips with more nodata than this")
    stride: int | None = Field(default=None, description="pixels between chip origins (overlap if < chip_size)")
    pad_edges: bool | None = Field(default=None, description="keep partial chips at the right/bottom edges")
    indexers: dict[str, str] = Field(default_factory=dict, description="collection -> indexer kind")
    assets: dict[str, list[str]] = Field(default_factory=dict, description="collection -> asset keys to keep")

    def for_collection(self, config: CollectionConfig | None) -> ChipSettings:
        base = config.chips if config is not None else ChipSettings()
        collection = config.collection if config is not None else None
        assets = self.assets.get(collection) if collection else None
        return ChipSettings(
            chip_size=self.chip_size if self.chip_size is not None else base.chip_size,
            chip_max_nodata=self.chip_max_nodata if self.chip_max_nodata is not None else base.chip_max_nodata,
            indexer=self.indexers.get(collection, base.indexer) if collection else base.indexer,
            stride=self.stride if self.stride is not None else base.stride,
            pad_edges=self.pad_edges if self.pad_edges is not None else base.pad_edges,
            assets=tuple(assets) if assets is not None else base.assets,
        )


def _bound(name: str, kind: str, value: object):
    """EnvVar(name) for text and integer fields (resolved in the run, shown by name in the UI), else the value."""
    if kind == "int":
        return EnvVar.int(name)
    if kind == "str":
        return EnvVar(name)
    return value


def resource_env_values(settings: Settings | None = None) -> dict[str, dict]:
    """Field values of each resource bound to the environment variables above that are set (EnvVar
    where possible); the `StacChipsComponent` layers its YAML values over these. Which variables are
    set comes from `io.settings` (default: `load_settings()`)."""
    settings = load_settings() if settings is None else settings
    return {
        key: {f: _bound(name, RESOURCE_ENV[key][f][1], value)
              for f, (name, value) in settings.resources.get(key, {}).items()}
        for key in RESOURCE_ENV
    }


#: resource key -> its class (the keys the assets require)
RESOURCE_CLASSES: dict[str, type[ConfigurableResource]] = {
    "stac_source": StacSourceResource, "storage": StorageResource, "chip_settings": ChipSettingsResource,
}


def default_resources(settings: Settings | None = None) -> dict[str, ConfigurableResource]:
    """Resources with defaults, bound to the environment variables above when they are set."""
    return {key: RESOURCE_CLASSES[key](**values) for key, values in resource_env_values(settings).items()}
