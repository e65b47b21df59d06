"""The one place where ``STACCHIP_*`` environment variables are read.

`load_settings()` reads them into a frozen `Settings` (the code location calls it once when it loads,
`dagster_defs.build_definitions`); library modules never read the environment at import time. Names
and defaults are those of the README's configuration tables. A malformed value is a StacchipError
naming the variable.

The resource limits (`core.limits.ReadLimits`, pure) are built here from ``STACCHIP_MAX_*``:
`read_limits()` is what library functions use when the caller passes no limits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stacchip_assets.core.limits import ReadLimits, limits_from_mapping
from stacchip_assets.errors import StacchipError

__all__ = [
    "BACKFILL_PARTITIONS_PER_RUN_ENV", "COLLECTIONS_ENV", "COMBINED_FRESHNESS_ENV", "COLLECTIONS_FILE_ENV", "COMBINED_INTERVAL_ENV",
    "DASK_SCHEDULER_ENV", "EXECUTOR_ENV", "MALLOC_TUNING_ENV", "RESOURCE_ENV", "RETRY_DELAY_ENV", "SAMPLE_DIR_ENV", "SENSOR_INTERVAL_ENV",
    "STORAGE_BASE_ENV", "Settings", "default_base", "default_sample_dir", "load_settings", "malloc_tuning_enabled",
    "read_limits",
]

STORAGE_BASE_ENV = "STACCHIP_STORAGE_BASE"
EXECUTOR_ENV = "STACCHIP_EXECUTOR"
COLLECTIONS_FILE_ENV = "STACCHIP_COLLECTIONS_FILE"
COLLECTIONS_ENV = "STACCHIP_COLLECTIONS"
SENSOR_INTERVAL_ENV = "STACCHIP_SENSOR_INTERVAL_SECONDS"
COMBINED_INTERVAL_ENV = "STACCHIP_COMBINED_INTERVAL_SECONDS"
BACKFILL_PARTITIONS_PER_RUN_ENV = "STACCHIP_BACKFILL_PARTITIONS_PER_RUN"
COMBINED_FRESHNESS_ENV = "STACCHIP_COMBINED_FRESHNESS_HOURS"
DASK_SCHEDULER_ENV = "STACCHIP_DASK_SCHEDULER"
RETRY_DELAY_ENV = "STACCHIP_RETRY_DELAY_SECONDS"
SAMPLE_DIR_ENV = "STACCHIP_SAMPLE_DIR"
MALLOC_TUNING_ENV = "STACCHIP_MALLOC_TUNING"

#: Resource fields bound to a variable: resource key -> field -> (variable, kind). "str"/"int" fields are
#: bound as Dagster `EnvVar`s (resolved in the run, shown by name in the UI), "json"/"float" as values.
RESOURCE_ENV: dict[str, dict[str, tuple[str, str]]] = {
    "stac_source": {
        "api_url": ("STACCHIP_STAC_API_URL", "str"),
        "catalog_path": ("STACCHIP_STAC_CATALOG", "str"),
        "max_items_per_tick": ("STACCHIP_MAX_ITEMS_PER_TICK", "int"),
        "max_retries": ("STACCHIP_STAC_MAX_RETRIES", "int"),
    },
    "storage": {
        "base": (STORAGE_BASE_ENV, "str"),
        "s3_endpoint_url": ("STACCHIP_S3_ENDPOINT_URL", "str"),
        "s3_region": ("STACCHIP_S3_REGION", "str"),
        # credentials: the AWS names, never copied into a STACCHIP_* setting
        "s3_access_key_id": ("AWS_ACCESS_KEY_ID", "str"),
        "s3_secret_access_key": ("AWS_SECRET_ACCESS_KEY", "str"),
        "s3_session_token": ("AWS_SESSION_TOKEN", "str"),
        "gdal_options": ("STACCHIP_GDAL_OPTIONS", "json"),
        "href_signer": ("STACCHIP_HREF_SIGNER", "str"),
        "image_url_prefix": ("STACCHIP_IMAGE_URL_PREFIX", "str"),
    },
    "chip_settings": {
        "chip_size": ("STACCHIP_CHIP_SIZE", "int"),
        "chip_max_nodata": ("STACCHIP_CHIP_MAX_NODATA", "float"),
    },
}


@dataclass(frozen=True)
class Settings:
    """Everything the environment configures, read once (see `load_settings`).

    `resources`: resource key -> field -> (variable, value) of the resource variables that are set
    (values parsed for "json"/"float" fields, the raw text otherwise)."""

    executor: str = "in_process"
    collections_file: str | None = None
    collections: str | None = None
    sensor_interval_seconds: int = 60
    combined_interval_seconds: int = 30
    backfill_partitions_per_run: int = 100
    combined_freshness_hours: float = 24.0
    retry_delay_seconds: float = 5.0
    dask_scheduler: str | None = None
    storage_base: str | None = None
    dagster_home: str | None = None
    sample_dir: str | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    resources: Mapping[str, Mapping[str, tuple[str, object]]] = field(default_factory=dict)

    @property
    def default_base(self) -> str:
        """``$STACCHIP_STORAGE_BASE``, else ``$DAGSTER_HOME/stacchip``, else ``./.dagster_home/stacchip``."""
        if self.storage_base:
            return self.storage_base
        if self.dagster_home:
            return str(Path(self.dagster_home).expanduser().absolute() / "stacchip")
        return str(Path(".dagster_home").absolute() / "stacchip")

    @property
    def default_sample_dir(self) -> Path:
        """``$STACCHIP_SAMPLE_DIR``, else ``$DAGSTER_HOME/stacchip_sample``, else ``~/.cache/stacchip_assets/sample``."""
        if self.sample_dir:
            return Path(self.sample_dir).expanduser()
        if self.dagster_home:
            return Path(self.dagster_home).expanduser() / "stacchip_sample"
        return Path.home() / ".cache" / "stacchip_assets" / "sample"


def _seconds(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    try:
        return max(1, int(value)) if value else default
    except ValueError as exc:
        raise StacchipError(f"{name} must be a whole number of seconds, got {value!r}") from exc


def _hours(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise StacchipError(f"{name} must be a positive number of hours, got {raw!r}")
    return value


def _delay(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise StacchipError(f"{name} must be a number of seconds (0 or more), got {raw!r}")
    return value


def _at_least_one(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StacchipError(f"{name}={raw!r} must be a whole number of at least 1")
    return value


def _resource_value(name: str, kind: str, raw: str) -> object:
    """A resource variable's value: JSON objects and floats parsed, anything else kept as text."""
    if kind == "json":
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise StacchipError(f"{name} must be a JSON object: {exc}") from exc
        if not isinstance(value, dict):
            raise StacchipError(f"{name} must be a JSON object, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}
    if kind == "float":
        try:
            return float(raw)
        except ValueError as exc:
            raise StacchipError(f"{name} must be a number, got {raw!r}") from exc
    return raw


def _resources(environ: Mapping[str, str]) -> dict[str, dict[str, tuple[str, object]]]:
    return {
        key: {f: (name, _resource_value(name, kind, environ[name])) for f, (name, kind) in fields.items()
              if environ.get(name)}
        for key, fields in RESOURCE_ENV.items()
    }


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `environ` (default: the process environment), validated."""
    environ = os.environ if environ is None else environ
    return Settings(
        executor=environ.get(EXECUTOR_ENV, "").strip().lower() or "in_process",
        collections_file=environ.get(COLLECTIONS_FILE_ENV) or None,
        collections=environ.get(COLLECTIONS_ENV) or None,
        sensor_interval_seconds=_seconds(environ, SENSOR_INTERVAL_ENV, 60),
        combined_interval_seconds=_seconds(environ, COMBINED_INTERVAL_ENV, 30),
        backfill_partitions_per_run=_at_least_one(environ, BACKFILL_PARTITIONS_PER_RUN_ENV, 100),
        combined_freshness_hours=_hours(environ, COMBINED_FRESHNESS_ENV, 24.0),
        retry_delay_seconds=_delay(environ, RETRY_DELAY_ENV, 5.0),
        dask_scheduler=environ.get(DASK_SCHEDULER_ENV) or None,
        storage_base=environ.get(STORAGE_BASE_ENV) or None,
        dagster_home=environ.get("DAGSTER_HOME") or None,
        sample_dir=environ.get(SAMPLE_DIR_ENV) or None,
        limits=limits_from_mapping(environ),
        resources=_resources(environ),
    )


def malloc_tuning_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``$STACCHIP_MALLOC_TUNING``: 1 (default) or 0, see :mod:`stacchip_assets.io.malloc_tuning`."""
    environ = os.environ if environ is None else environ
    raw = environ.get(MALLOC_TUNING_ENV, "1").strip()
    if raw not in ("0", "1"):
        raise StacchipError(f"{MALLOC_TUNING_ENV} must be 0 or 1, not {raw!r}")
    return raw == "1"


def read_limits(environ: Mapping[str, str] | None = None, **overrides: int) -> ReadLimits:
    """The configured limits: defaults, then ``STACCHIP_MAX_*`` variables of `environ` (default: the
    process environment), then `overrides`."""
    return limits_from_mapping(os.environ if environ is None else environ, **overrides)


def default_base(environ: Mapping[str, str] | None = None) -> str:
    """The storage base when none is given (see `Settings.default_base`)."""
    environ = os.environ if environ is None else environ
    return Settings(storage_base=environ.get(STORAGE_BASE_ENV) or None,
                    dagster_home=environ.get("DAGSTER_HOME") or None).default_base


def default_sample_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the sample catalog is generated (see `Settings.default_sample_dir`)."""
    environ = os.environ if environ is None else environ
    return Settings(sample_dir=environ.get(SAMPLE_DIR_ENV) or None,
                    dagster_home=environ.get("DAGSTER_HOME") or None).default_sample_dir
