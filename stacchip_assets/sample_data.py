"""Old path of :mod:`stacchip_assets.demo.sample_data`, kept for one release (the same module object)."""

import sys

from stacchip_assets.demo import sample_data as _module

sys.modules[__name__] = _module
