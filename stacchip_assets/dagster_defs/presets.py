"""Collection presets and the collections the code location indexes -- configuration, not code.

The presets below are a YAML document: one entry per platform stacchip processed, with the search
parameters (``search:``, see :class:`stacchip_assets.io.stac_source.SearchParams`) and chip settings
(``chips:``, see :class:`stacchip_assets.index.item_index.ChipSettings`). Asset keys follow the catalogs
named in ``source_hint``.

Which collections are indexed (one ``stac_items`` partition each) is read when the code location
loads, in this order:

1. ``STACCHIP_COLLECTIONS_FILE``: a YAML file with ``collections:`` (a list of entries) and
   optionally ``presets:`` (more presets, or replacements);
2. ``STACCHIP_COLLECTIONS``: comma-separated preset names, used as they are;
3. otherwise ``default_collections`` below: the five collections of the embedded sample catalog.

An entry of ``collections:`` is ``{preset: NAME}`` plus overrides of any field (``collection:``,
``search: {...}``, ``chips: {...}``); an override set to ``null`` falls back to the built-in default.
This module does not import Dagster.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StacchipError
from stacchip_assets.index.item_index import ChipSettings
from stacchip_assets.io.settings import COLLECTIONS_ENV, COLLECTIONS_FILE_ENV, Settings, load_settings  # noqa: F401 (re-exported)
from stacchip_assets.io.stac_source import SearchParams

PRESETS_YAML = """
presets:
  sentinel-2-l2a:
    description: Sentinel-2 L2A, 10 m bands + SCL (Earth Search v1 asset keys)
    source_hint: https://earth-search.aws.element84.com/v1
    collection: sentinel-2-l2a
    search:
      query: {"eo:cloud_cover": {"lt": 50}}
      sortby: [{field: "properties.eo:cloud_cover", direction: asc}]
      selection: least_cloudy_per_tile_quarter      # stacchip's rule
      tile_properties: ["grid:code", "s2:mgrs_tile", "mgrs:utm_zone+mgrs:latitude_band+mgrs:grid_square"]
      max_items: 1000
    chips:
      indexer: sentinel-2
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [blue, green, red, nir, rededge1, rededge2, rededge3, nir08, swir16, swir22]
  landsat-c2-l2:
    description: Landsat Collection 2 Level-2 surface reflectance + QA_PIXEL (Planetary Computer keys)
    source_hint: https://planetarycomputer.microsoft.com/api/stac/v1
    collection: landsat-c2-l2
    search:
      query: {"eo:cloud_cover": {"lt": 50}, "platform": {"in": ["landsat-8", "landsat-9"]}}
      selection: least_cloudy_per_tile_quarter
      tile_properties: ["landsat:wrs_path+landsat:wrs_row"]
      max_items: 1000
    chips:
      indexer: landsat
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [red, green, blue, nir08, swir16, swir22]
  sentinel-1-rtc:
    description: Sentinel-1 RTC gamma0 VV/VH (Planetary Computer keys); nodata from the vv nodata value, no clouds
    source_hint: https://planetarycomputer.microsoft.com/api/stac/v1
    collection: sentinel-1-rtc
    search:
      query: {"sar:instrument_mode": {"eq": "IW"}}
      max_items: 1000
    chips:
      indexer: nodata
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [vv, vh]
  naip:
    description: NAIP 4-band aerial imagery (Planetary Computer keys); no cloud statistics
    source_hint: https://planetarycomputer.microsoft.com/api/stac/v1
    collection: naip
    search:
      max_items: 1000
    chips:
      indexer: nostats
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [image]
  modis-09a1-061:
    description: MODIS Terra 8-day surface reflectance 500 m + sur_refl_qc_500m (Planetary Computer keys)
    source_hint: https://planetarycomputer.microsoft.com/api/stac/v1
    collection: modis-09a1-061
    search:
      sortby: [{field: "properties.datetime", direction: desc}]
      max_items: 1000
    chips:
      indexer: modis
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [sur_refl_b01, sur_refl_b02, sur_refl_b03, sur_refl_b04, sur_refl_b05, sur_refl_b06, sur_refl_b07]
  linz-aerial:
    description: LINZ-style aerial imagery (static catalog of one survey, RGB "visual" COGs); no statistics
    source_hint: s3://nz-imagery/catalog.json (static catalog; set catalog_path and collection to the survey)
    collection: linz-aerial
    search:
      max_items: 10000
    chips:
      indexer: nostats
      chip_size: 256
      chip_max_nodata: 0.5
      assets: [visual]

# The embedded sample catalog (stacchip_assets.demo.sample_data): every item, every raster asset it has.
default_collections:
  - preset: sentinel-2-l2a
    search: {query: null, sortby: null, selection: all}
    chips: {assets: [blue, green, red, nir, rededge1, swir16]}
  - preset: landsat-c2-l2
    search: {query: null, selection: all}
  - preset: naip
  - preset: sentinel-1-rtc
    search: {query: null}
  - preset: modis-09a1-061
"""


@dataclass(frozen=True)
class CollectionConfig:
    """One configured collection: the `stac_items` partition key is `collection`."""

    collection: str
    search: SearchParams
    chips: ChipSettings
    preset: str | None = None
    description: str = ""


def _merge(base: Any, override: Any) -> Any:
    """Deep merge of mappings; `None` in the override deletes the key (back to the default)."""
    if not isinstance(base, Mapping) or not isinstance(override, Mapping):
        return copy.deepcopy(override)
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def builtin_presets() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(PRESETS_YAML)["presets"]


def _chip_settings(values: Mapping[str, Any]) -> ChipSettings:
    values = dict(values)
    unknown = set(values) - set(ChipSettings.__dataclass_fields__)
    if unknown:
        raise StacchipError(f"unknown chip settings {sorted(unknown)}")
    if values.get("assets") is not None:
        values["assets"] = tuple(values["assets"])
    return ChipSettings(**values)


def resolve_entry(entry: Mapping[str, Any] | str, presets: Mapping[str, Mapping[str, Any]]) -> CollectionConfig:
    """One `collections:` entry (or a bare preset name) as a CollectionConfig."""
    entry = {"preset": entry} if isinstance(entry, str) else dict(entry)
    name = entry.pop("preset", None)
    if name is not None and name not in presets:
        raise StacchipError(f"unknown collection preset {name!r}; known: {sorted(presets)}")
    merged = _merge(presets[name] if name else {}, entry)
    collection = merged.get("collection") or name
    if not collection:
        raise StacchipError(f"collection entry {entry!r} names neither a preset nor a collection")
    validate_id(collection, "collection")
    unknown = set(merged) - {"collection", "search", "chips", "description", "source_hint"}
    if unknown:
        raise StacchipError(f"collection {collection!r}: unknown keys {sorted(unknown)}")
    return CollectionConfig(
        collection=collection,
        search=SearchParams.from_mapping(merged.get("search")),
        chips=_chip_settings(merged.get("chips") or {}),
        preset=name,
        description=str(merged.get("description", "")),
    )


def load_collections(path: str | os.PathLike | None = None, names: str | None = None,
                     settings: Settings | None = None) -> list[CollectionConfig]:
    """The configured collections (see the module docstring for where they come from; `settings`
    default: `load_settings()`)."""
    document = yaml.safe_load(PRESETS_YAML)
    presets = dict(document["presets"])
    if path is None or names is None:
        settings = load_settings() if settings is None else settings
        path = path if path is not None else settings.collections_file
        names = names if names is not None else settings.collections
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise StacchipError(f"cannot read the collections file {path}: {exc}") from exc
        presets.update(user.get("presets") or {})
        entries = user.get("collections")
        if not entries:
            raise StacchipError(f"the collections file {path} has no `collections:` list")
    elif names is not None:
        entries = [n.strip() for n in names.split(",") if n.strip()]
    else:
        entries = document["default_collections"]
    configs = [resolve_entry(entry, presets) for entry in entries]
    seen: set[str] = set()
    for config in configs:
        if config.collection in seen:
            raise StacchipError(f"collection {config.collection!r} is configured twice")
        seen.add(config.collection)
    return configs
