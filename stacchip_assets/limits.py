"""Resource limits on what untrusted STAC metadata may make the library allocate or read.

Read from the environment (STACCHIP_MAX_*) when not given; checked from the metadata before
anything is allocated, so a bogus `proj:shape` or a sparse file declaring a huge raster fails
with a clear error instead of exhausting memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

ENV_PREFIX = "STACCHIP_"


@dataclass(frozen=True)
class ReadLimits:
    """Upper bounds on chips per item, mask pixels read at once, tile pixels and chip size."""

    max_chips_per_item: int = 100_000
    max_mask_pixels: int = 100_000_000
    max_tile_pixels: int = 16_777_216
    max_chip_size: int = 4096

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ReadLimits":
        """Defaults overridden by STACCHIP_MAX_CHIPS_PER_ITEM, STACCHIP_MAX_MASK_PIXELS, ..."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw not in (None, ""):
                values[f.name] = int(raw)
        return cls(**values)

    @staticmethod
    def env_name(field_name: str) -> str:
        """The environment variable of a limit (named in error messages)."""
        return ENV_PREFIX + field_name.upper()
