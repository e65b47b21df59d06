"""Old path of :mod:`stacchip_assets.training.band_stats`, kept for one release (the same module object)."""

import sys

from stacchip_assets.training import band_stats as _module

sys.modules[__name__] = _module
