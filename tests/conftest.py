"""Shared test configuration."""

from __future__ import annotations

import os
import tempfile

# Tests that do not ask for the compiled fast path run the eager kernels (fast, and
# what the compiled path is checked against in tests/test_fast.py).
os.environ.setdefault("CUSTOMLOSS_COMPILE", "0")
# Kernels and derivatives cached on disk (customloss.diskcache) go to a fresh directory
# per test process, never to the user's ~/.cache.
os.environ.setdefault("CUSTOMLOSS_CACHE_DIR", tempfile.mkdtemp(prefix="customloss-test-cache-"))

# pytest-xdist runs one worker per core: a second intra-op thread per worker only
# oversubscribes the 2-core machine (a 4000x3 linear layer took 48 ms instead of 0.7 ms).
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is part of the dev install
    pass
