"""Old path of :mod:`stacchip_assets.index.item_index`, kept for one release (the same module object)."""

import sys

from stacchip_assets.index import item_index as _module

sys.modules[__name__] = _module
