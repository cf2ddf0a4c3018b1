"""The benchmark script's code paths run (timings themselves are not tested here)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as bench


def test_gpu_cases_run_on_any_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # the GPU rows have never had a GPU (no session was lent one); run their code on
    # the CPU, eagerly, so that a session with CUDA does not find a crash first
    monkeypatch.setenv("CUSTOMLOSS_COMPILE", "0")
    rows = bench.gpu_cases(4096, 2, torch.device("cpu"))
    assert len(rows) == 2
    floor, ref = rows
    assert "bandwidth floor" in floor.reference
    assert "focal" in ref.reference or "torchvision" in ref.reference
    for row in rows:
        ratio = float(row.ratio.split("x")[0])
        assert math.isfinite(ratio) and ratio > 0
        assert row.verdict in ("PASS", "FAIL")
