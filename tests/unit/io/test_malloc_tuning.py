"""The malloc thresholds (stacchip_assets.io.malloc_tuning): equal-size buffers stop being mapped and
faulted in again on every allocation; STACCHIP_MALLOC_TUNING=0 and the user's own MALLOC_* leave
malloc alone. Measured in fresh processes by their minor page faults (a count, not a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stacchip_assets import StacchipError
from stacchip_assets.io.settings import malloc_tuning_enabled

# One band of a Sentinel-2 SCL (128 rows of 5490), classified 40 times: two 700 KB temporaries each.
PROBE = r'''
import json, resource, sys
import numpy as np
from stacchip_assets.io.malloc_tuning import tune_malloc
applied = tune_malloc()
band = np.random.default_rng(0).integers(0, 12, (128, 5490), dtype=np.uint8)
(band | 2) == 3
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    (band | 2) == 3
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
'''


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_equal_size_buffers_are_reused_instead_of_faulted_in_again():
    tuned, untouched = _probe(), _probe(STACCHIP_MALLOC_TUNING="0")
    assert tuned["applied"] and not untouched["applied"]
    pages = 2 * 40 * (128 * 5490 // 4096)  # every page of both temporaries, each time
    assert untouched["faults"] > pages // 2, untouched  # what glibc does by itself
    assert tuned["faults"] < pages // 20, tuned


def test_the_users_own_malloc_settings_win():
    assert _probe(MALLOC_ARENA_MAX="2")["applied"] is False


def test_the_setting_is_0_or_1():
    assert malloc_tuning_enabled({}) is True
    assert malloc_tuning_enabled({"STACCHIP_MALLOC_TUNING": "0"}) is False
    with pytest.raises(StacchipError, match="STACCHIP_MALLOC_TUNING must be 0 or 1"):
        malloc_tuning_enabled({"STACCHIP_MALLOC_TUNING": "yes"})
