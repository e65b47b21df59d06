"""Resource limits on what untrusted STAC metadata may make us allocate, checked before reading.

Memory must not follow the metadata: a 1.1 MB COG may declare one 32,768 px tile (2.2 GB decoded),
an index row may claim a `chip_size` of 65,535 (16 GiB per chip), a sparse mask may declare
100,000 x 100,000 px, and `proj:shape` may promise 1.5e9 chips. Each limit lives in
:class:`ReadLimits`; :func:`limits_from_mapping` is the ONE place where defaults and overrides from
a mapping of variables are combined. This module is pure: the process environment is read by
:func:`stacchip_assets.io.settings.read_limits`::

    limits = read_limits()                    # defaults, overridden by STACCHIP_MAX_* variables
    limits.check_chip_size(256, item_id="x")  # raises ResourceLimitError past the limit

Variables (positive integers): ``STACCHIP_MAX_CHIPS_PER_ITEM``,
``STACCHIP_MAX_MASK_PIXELS``, ``STACCHIP_MAX_TILE_PIXELS``, ``STACCHIP_MAX_CHIP_SIZE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from stacchip_assets.errors import ResourceLimitError, StacchipError

__all__ = ["ENV_VARS", "ReadLimits", "ResourceLimitError", "limits_from_mapping"]


#: Environment variable of each field.
ENV_VARS: dict[str, str] = {
    "max_chips_per_item": "STACCHIP_MAX_CHIPS_PER_ITEM",
    "max_mask_pixels": "STACCHIP_MAX_MASK_PIXELS",
    "max_tile_pixels": "STACCHIP_MAX_TILE_PIXELS",
    "max_chip_size": "STACCHIP_MAX_CHIP_SIZE",
}


@dataclass(frozen=True)
class ReadLimits:
    """Upper bounds checked before anything is allocated or read.

    `max_chips_per_item`: chips one item's grid may have (1e5: a Sentinel-2 tile has 1,764 chips of 256 px;
    1e6 chips measured 178 s and 1.8 GB to index, past the 30 s / 2 GB bound for one item).
    `max_mask_pixels`: pixels of a mask read whole (1e8; a Sentinel-2 SCL is 3e7); a larger mask is read
    window by window under the chips. `max_tile_pixels`: pixels of one COG tile or strip (4096 x 4096; COGs use
    256-1024 px tiles). `max_chip_size`: chip edge in pixels accepted from an index row (4096).
    """

    max_chips_per_item: int = 100_000
    max_mask_pixels: int = 100_000_000
    max_tile_pixels: int = 4096 * 4096
    max_chip_size: int = 4096

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StacchipError(f"resource limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_mapping(cls, environ: Mapping[str, str]) -> ReadLimits:
        """Defaults overridden by the ``STACCHIP_MAX_*`` entries of `environ` (see :func:`limits_from_mapping`)."""
        return limits_from_mapping(environ)

    @staticmethod
    def env_name(field_name: str) -> str:
        """The environment variable of a limit (named in error messages)."""
        return ENV_VARS[field_name]

    def check_chip_size(self, chip_size: object, *, item_id: str | None = None, asset_key: str | None = None) -> int:
        """`chip_size` as an int if 1 <= chip_size <= max_chip_size, else ResourceLimitError."""
        try:
            size = int(chip_size)  # type: ignore[call-overload]
            valid = not isinstance(chip_size, bool) and size == chip_size
        except (TypeError, ValueError, OverflowError):
            valid, size = False, 0
        if not valid or size < 1:
            raise ResourceLimitError(f"chip_size {chip_size!r} is not a positive integer", item_id=item_id,
                                     asset_key=asset_key)
        if size > self.max_chip_size:
            raise ResourceLimitError(f"chip_size {size} exceeds the limit max_chip_size={self.max_chip_size} "
                                     f"({ENV_VARS['max_chip_size']})", item_id=item_id, asset_key=asset_key)
        return size

    def check_tile(self, block_shape: tuple[int, int], *, item_id: str | None = None, asset_key: str | None = None,
                   href: str | None = None) -> None:
        """ResourceLimitError if one tile/strip (rows, cols) has more than max_tile_pixels pixels."""
        rows, cols = (int(v) for v in block_shape)
        if rows * cols > self.max_tile_pixels:
            where = f"{href}: " if href else ""
            raise ResourceLimitError(
                f"{where}a tile of {cols}x{rows} px ({rows * cols} px) exceeds the limit "
                f"max_tile_pixels={self.max_tile_pixels} ({ENV_VARS['max_tile_pixels']}); not read",
                item_id=item_id, asset_key=asset_key)

    def check_count(self, name: str, value: int, *, what: str, item_id: str | None = None,
                    asset_key: str | None = None) -> None:
        """ResourceLimitError if `value` exceeds the limit field `name` (e.g. "max_chips_per_item")."""
        limit = getattr(self, name)
        if value > limit:
            raise ResourceLimitError(f"{what} ({value}) exceeds the limit {name}={limit} ({ENV_VARS[name]})",
                                     item_id=item_id, asset_key=asset_key)


def limits_from_mapping(environ: Mapping[str, str], **overrides: int) -> ReadLimits:
    """Defaults, then the ``STACCHIP_MAX_*`` entries of `environ` (a mapping given by the caller), then `overrides`."""
    values: dict[str, int] = {}
    for name, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        try:
            values[name] = int(raw.strip().replace("_", ""))
        except ValueError:
            raise StacchipError(f"{var}={raw!r} is not an integer") from None
    values.update(overrides)
    return replace(ReadLimits(), **values)
