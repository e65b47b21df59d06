"""The stacchip drop-in name `stacchip_assets.indexer` (`stacchip.indexer`): the same module as
:mod:`stacchip_assets.index.chip_indexer`."""

import sys

from stacchip_assets.index import chip_indexer as _module

sys.modules[__name__] = _module
