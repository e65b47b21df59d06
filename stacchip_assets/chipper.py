"""The stacchip drop-in name `stacchip_assets.chipper` (`stacchip.chipper`): the same module as
:mod:`stacchip_assets.index.chipper`."""

import sys

from stacchip_assets.index import chipper as _module

sys.modules[__name__] = _module
