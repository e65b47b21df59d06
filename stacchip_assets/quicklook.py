"""Old path of :mod:`stacchip_assets.index.quicklook`, kept for one release (the same module object)."""

import sys

from stacchip_assets.index import quicklook as _module

sys.modules[__name__] = _module
