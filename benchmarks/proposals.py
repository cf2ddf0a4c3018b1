#!/usr/bin/env python
"""Evidence for changes proposed outside ``customloss/fast.py`` (see docs/performance.md).

Prototypes, measured against today's compiled path and the torch built-ins:

* **fused reduction** (a ``torch_backend`` change): the compiled forward returns
  ``(sum of the elementwise loss, d loss/d input)`` from one Inductor loop, so the
  elementwise loss is never stored; backward scales the saved derivative in place
  instead of allocating a new tensor.
* **cheaper transcendental forms** (a ``codegen``/``calculus`` change), shown on focal
  loss: one ``e = exp(-|x|)`` shared by ``sigmoid(+-x)`` and ``softplus(+-x)``, and
  ``b**gamma = b * b**(gamma - 1)`` so the pair of powers costs one ``pow``.

Usage::

    python benchmarks/proposals.py [--n N] [--reps R]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run
from run import DSL, focal, fwd_bwd, interleaved, make_inputs, peak_rss_mib, prepare

TINY32 = torch.finfo(torch.float32).tiny


class FusedReduced(torch.autograd.Function):
    """Prototype of the proposed forward: reduced value + saved derivative, in-place backward."""

    @staticmethod
    def forward(ctx: Any, fn: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total, d = fn(x, y)
        ctx.d, ctx.n = d, x.numel()
        return total / ctx.n

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        d, ctx.d = ctx.d, None
        return None, d.mul_(g / ctx.n), None


def reduced(kernel_fn: Any, consts: tuple[float, ...]) -> Any:
    """torch.compile of ``(values.sum(), d)`` with the params as constants."""

    def fused(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, d = kernel_fn(x, y, *consts)
        return v.sum(), d

    return torch.compile(fused, dynamic=True)


def focal_cheap(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal (alpha=0.25, gamma=2) value and d/dx with shared transcendental terms."""
    alpha, gamma = 0.25, 2.0
    e = torch.exp(-x.abs())
    r = 1 / (1 + e)
    pos = x >= 0
    s = torch.where(pos, r, e * r)  # sigmoid(x)
    sn = torch.where(pos, e * r, r)  # sigmoid(-x), no cancellation
    l1p = torch.log1p(e)
    sp = torch.clamp_min(x, 0) + l1p  # softplus(x)
    spn = torch.clamp_min(-x, 0) + l1p  # softplus(-x)
    t1 = 1 - y
    ce = t1 * sp + y * spn
    b = y * sn + t1 * s  # 1 - p_t
    at = t1 * (1 - alpha) + alpha * y
    bg1 = torch.pow(torch.clamp_min(b, TINY32), gamma - 1)
    bg = bg1 * b
    v = at * bg * ce
    d = at * (bg * (s - y) + ce * gamma * bg1 * (t1 * s * sn - y * sn * s))
    return v, d


def load() -> str:
    return "?" if run.last_background is None else f"{run.last_background:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--wait-idle", type=float, default=0.0, help="see run.py --wait-idle")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    run.wait_idle_s = args.wait_idle
    dev = torch.device("cpu")
    n = args.n
    if args.memory_child:
        return memory_child(n)
    print(f"N = {n}, {args.reps} interleaved repetitions, median ms, forward + backward")

    # focal ------------------------------------------------------------------
    x, y = make_inputs(n, "logits", dev)
    prepare(focal, x, y)
    k = focal._kernel("torch", ("x",), value=True)
    fused = reduced(k.fn, (0.25, 2.0))
    cheap = torch.compile(
        lambda a, b: (lambda v, d: (v.sum(), d))(*focal_cheap(a, b)), dynamic=True
    )
    with torch.no_grad():  # the prototypes compute what the generated kernel computes
        ref_v, ref_d = k.fn(x, y, torch.tensor(0.25), torch.tensor(2.0))
        v2, d2 = focal_cheap(x, y)
        torch.testing.assert_close(v2, ref_v, rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(d2, ref_d, rtol=2e-5, atol=1e-7)
    m = interleaved(
        {
            "today (compiled)": fwd_bwd(focal, x, y),
            "+ fused reduction": fwd_bwd(lambda a, b: FusedReduced.apply(fused, a, b), x, y),
            "+ cheaper forms": fwd_bwd(lambda a, b: FusedReduced.apply(cheap, a, b), x, y),
            "F.bce_with_logits": fwd_bwd(F.binary_cross_entropy_with_logits, x, y),
        },
        args.reps,
        dev,
    )
    bce = m["F.bce_with_logits"]
    print(f"\n| focal, N={n} | median ms | / F.bce_with_logits |  (others' load {load()} cores)")
    print("|---|---|---|")
    for name, v in m.items():
        print(f"| {name} | {v:.2f} | {v / bce:.2f}x |")

    # mse --------------------------------------------------------------------
    mse = DSL["mse"]
    x, y = make_inputs(n, "regression", dev)
    prepare(mse, x, y)
    km = mse._kernel("torch", ("p",), value=True)
    fused_m = reduced(km.fn, ())
    m = interleaved(
        {
            "today (compiled)": fwd_bwd(mse, x, y),
            "+ fused reduction": fwd_bwd(lambda a, b: FusedReduced.apply(fused_m, a, b), x, y),
            "F.mse_loss": fwd_bwd(F.mse_loss, x, y),
        },
        args.reps,
        dev,
    )
    print(f"\n| mse, N={n} | median ms | / F.mse_loss |  (others' load {load()} cores)")
    print("|---|---|---|")
    for name, v in m.items():
        print(f"| {name} | {v:.2f} | {v / m['F.mse_loss']:.2f}x |")
    if sys.platform.startswith("linux"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        cmd = [sys.executable, __file__, "--memory-child", "--n", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        print(f"\n| mse, N={n}: peak memory growth of forward+backward | MiB |")
        print("|---|---|")
        for line in out.stdout.splitlines():
            if line.startswith("MEM "):
                _, name, mib = line.split(" ", 2)
                print(f"| {name.replace('_', ' ')} | {mib} |")
    return 0


def memory_child(n: int) -> int:
    """Peak memory of mse today, with the fused reduction, and F.mse_loss."""
    mse = DSL["mse"]
    x, y = make_inputs(n, "regression", torch.device("cpu"))
    prepare(mse, x, y)
    fused_m = reduced(mse._kernel("torch", ("p",), value=True).fn, ())
    for name, fn in (
        ("today_(compiled)", mse),
        ("+_fused_reduction_and_in-place_backward", lambda a, b: FusedReduced.apply(fused_m, a, b)),
        ("F.mse_loss", F.mse_loss),
    ):
        print(f"MEM {name} {peak_rss_mib(fwd_bwd(fn, x, y), x):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
