"""The demo reproduces the seed results (end to end, in a fresh interpreter)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_reproduces_seed_examples():
    out = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "-log 0.6 = 0.5108  ->  0.51" in out
    assert re.search(r"fit: w = 1\.0400, b = -0\.1000", out)
    assert "dweighted_sq/dp" in out
    assert "nan" not in out.lower().replace("nan(", "") and "inf" not in out.split("4.")[-1]
