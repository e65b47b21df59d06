"""Old path of :mod:`stacchip_assets.core.hrefs`, kept for one release (the same module object)."""

import sys

from stacchip_assets.core import hrefs as _module

sys.modules[__name__] = _module
