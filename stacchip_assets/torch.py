"""Old path of :mod:`stacchip_assets.training.torch`, kept for one release (the same module object)."""

import sys

from stacchip_assets.training import torch as _module

sys.modules[__name__] = _module
