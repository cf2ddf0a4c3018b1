"""Shared test configuration."""

from __future__ import annotations

import os

# Tests that do not ask for the compiled fast path run the eager kernels (fast, and
# what the compiled path is checked against in tests/test_fast.py).
os.environ.setdefault("CUSTOMLOSS_COMPILE", "0")
