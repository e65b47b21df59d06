"""Shared test configuration."""

import os

from hypothesis import settings

# CI explores the same examples on every run (a red CI must be reproducible); developers get fresh ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
