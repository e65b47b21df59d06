"""Old path of :mod:`stacchip_assets.io.stac_source`, kept for one release (the same module object)."""

import sys

from stacchip_assets.io import stac_source as _module

sys.modules[__name__] = _module
