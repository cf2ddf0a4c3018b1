"""Per-call times of focal (ours, compiled) and F.bce_with_logits, to see the jitter.

``python benchmarks/jitter.py``: ten calls of each alone, then eight rounds
interleaved with the eager torchvision formula, then ten of ours again (N = 4M,
forward + backward, milliseconds). The medians in ``run.py`` hide how single calls
spread; this shows it (docs/performance.md, "Focal's ratio, run to run").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import run as bench


def _times(f: Callable[[], None], k: int = 10) -> list[float]:
    out = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        out.append(round((time.perf_counter() - t) * 1e3, 1))
    return out


def main() -> None:
    x, y = bench.make_inputs(4_000_000, "logits", torch.device("cpu"))
    bench.prepare(bench.focal, x, y)
    ours = bench.fwd_bwd(bench.focal, x, y)
    bce = bench.fwd_bwd(F.binary_cross_entropy_with_logits, x, y)
    tv = bench.fwd_bwd(bench.torchvision_focal, x, y)
    print("ours alone:", _times(ours))
    print("bce alone: ", _times(bce))
    rounds = []
    for _ in range(8):
        rounds.append({n: _times(f, 1)[0] for n, f in (("tv", tv), ("ours", ours), ("bce", bce))})
    print("interleaved:", rounds)
    print("ours alone after:", _times(ours))


if __name__ == "__main__":
    main()
