"""Old path of :mod:`stacchip_assets.index.compaction`, kept for one release (the same module object)."""

import sys

from stacchip_assets.index import compaction as _module

sys.modules[__name__] = _module
