"""Old path of :mod:`stacchip_assets.io.geoparquet`, kept for one release (the same module object)."""

import sys

from stacchip_assets.io import geoparquet as _module

sys.modules[__name__] = _module
