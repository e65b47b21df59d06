"""`StacChipsComponent`: the whole stacchip graph of a `dg` project, configured by one `defs.yaml`.

    type: stacchip_assets.dagster_defs.component.StacChipsComponent
    attributes:
      collections: [{preset: sentinel-2-l2a}, {preset: naip, chips: {assets: [image]}}]
      stac_source: {api_url: https://earth-search.aws.element84.com/v1}   # or catalog_path: catalog.json
      storage: {base: s3://bucket/stacchip, s3_endpoint_url: http://127.0.0.1:9000}
      chip_settings: {chip_size: 256}

Wiring only: the attributes become the arguments of :func:`build_definitions`, so the component
yields exactly the graph of this repository's code location. Registered for `dg list components`
through the ``dagster_dg_cli.registry_modules`` entry point (pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from dagster import ConfigurableResource, Definitions
from dagster.components import Component, ComponentLoadContext, Model, Resolvable
from pydantic import Field, create_model

from stacchip_assets.dagster_defs import build_definitions
from stacchip_assets.dagster_defs.presets import CollectionConfig, builtin_presets, load_collections, resolve_entry
from stacchip_assets.dagster_defs.resources import RESOURCE_CLASSES, resource_env_values
from stacchip_assets.errors import StacchipError


class ChipOverrides(Resolvable, Model):
    """Chip settings of one collection (unset: the preset's; null: the built-in default)."""

    indexer: str | None = Field(default=None, description="indexer: sentinel-2, landsat, modis, nodata, nostats")
    chip_size: int | None = Field(default=None, description="chip size in pixels")
    chip_max_nodata: float | None = Field(default=None, description="drop chips with more nodata than this")
    stride: int | None = Field(default=None, description="pixels between chip origins")
    pad_edges: bool | None = Field(default=None, description="keep partial chips at the right/bottom edges")
    assets: list[str] | None = Field(default=None, description="asset keys to keep (the mask is always kept)")


class CollectionEntry(Resolvable, Model):
    """One collection: a preset and/or a collection id, with overrides of its search and chips."""

    preset: str | None = Field(default=None, description="a preset name (see stacchip_assets.dagster_defs.presets)")
    collection: str | None = Field(default=None, description="collection id (default: the preset name)")
    description: str | None = None
    search: dict[str, Any] | None = Field(
        default=None, description="search parameters: bbox, datetime, query, filter, sortby, max_items, selection, ...",
    )
    chips: ChipOverrides | None = None


def _resource_model(name: str, resource: type[ConfigurableResource]) -> type[Model]:
    """A YAML model with the fields of `resource` (same names, types, defaults and descriptions), all optional."""
    fields = {
        key: (Optional[info.annotation], Field(default=None, description=info.description))  # noqa: UP045 (built at run time from any annotation)
        for key, info in resource.model_fields.items()
    }
    return create_model(name, __base__=(Resolvable, Model), __doc__=resource.__doc__, **fields)  # type: ignore[call-overload]


StacSourceModel = _resource_model("StacSourceModel", RESOURCE_CLASSES["stac_source"])
StorageModel = _resource_model("StorageModel", RESOURCE_CLASSES["storage"])
ChipSettingsModel = _resource_model("ChipSettingsModel", RESOURCE_CLASSES["chip_settings"])


class StacChipsComponent(Component, Resolvable, Model):
    """Index every ML chip of the STAC items of some collections: `stac_items` -> `chip_index` (one
    partition per item, launched by a sensor) -> `combined_index`, training assets, checks and jobs.

    Unset attributes fall back to the STACCHIP_* environment variables (secrets stay `EnvVar`s),
    then to the defaults; relative local paths are relative to this `defs.yaml`'s folder.
    """

    collections: list[CollectionEntry] | None = Field(
        default=None, description="the collections, e.g. [{preset: naip}] (default: STACCHIP_COLLECTIONS(_FILE), "
        "else the five collections of the sample catalog)",
    )
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="more presets, or replacements of built-in ones (same form as PRESETS_YAML)",
    )
    stac_source: StacSourceModel | None = Field(  # type: ignore[valid-type]
        default=None, description="STAC API (api_url) or static catalog (catalog_path); neither: the sample catalog",
    )
    storage: StorageModel | None = Field(  # type: ignore[valid-type]
        default=None, description="storage base: a local folder or s3://bucket/prefix, with its S3 endpoint",
    )
    chip_settings: ChipSettingsModel | None = Field(  # type: ignore[valid-type]
        default=None, description="chip settings for every collection (override the presets')",
    )

    def collection_configs(self) -> list[CollectionConfig]:
        """The configured collections, resolved against the built-in and the given presets."""
        if self.collections is None:
            if self.presets:
                raise StacchipError("`presets` given without `collections`: name the collections to index")
            return load_collections()  # STACCHIP_COLLECTIONS(_FILE), else the sample catalog's
        presets = {**builtin_presets(), **self.presets}
        configs = [resolve_entry(entry.model_dump(exclude_unset=True), presets) for entry in self.collections]
        ids = [config.collection for config in configs]
        twice = sorted({c for c in ids if ids.count(c) > 1})
        if twice:
            raise StacchipError(f"collections configured twice: {twice}")
        return configs

    def resources(self, folder: Path | None = None) -> dict[str, ConfigurableResource]:
        """The stac_source, storage and chip_settings resources: YAML values over environment values."""
        given = {"stac_source": self.stac_source, "storage": self.storage, "chip_settings": self.chip_settings}
        out: dict[str, ConfigurableResource] = {}
        for key, values in resource_env_values().items():
            model = given[key]
            yaml_values: dict[str, Any] = model.model_dump(exclude_unset=True) if model is not None else {}
            for path_field in ("catalog_path", "base"):
                value = yaml_values.get(path_field)
                if folder is not None and isinstance(value, str) and "://" not in value:
                    yaml_values[path_field] = str((folder / Path(value).expanduser()).resolve())
            out[key] = RESOURCE_CLASSES[key](**{**values, **yaml_values})
        return out

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        """`build_definitions` of the configured collections and resources (the same graph as `defs`)."""
        return build_definitions(self.collection_configs(), self.resources(Path(context.path)))

