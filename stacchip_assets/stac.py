"""Old path of :mod:`stacchip_assets.core.stac`, kept for one release (the same module object)."""

import sys

from stacchip_assets.core import stac as _module

sys.modules[__name__] = _module
