"""Old path of :mod:`stacchip_assets.io.raster`, kept for one release (the same module object)."""

import sys

from stacchip_assets.io import raster as _module

sys.modules[__name__] = _module
