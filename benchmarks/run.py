#!/usr/bin/env python
"""Ratio benchmarks: losses designed in the customloss DSL vs the torch built-ins.

Every timing is forward + backward (``loss(x, y).backward()`` with ``reduction="mean"``),
measured in this process with the references interleaved with ours (the order rotates
every repetition); the table reports medians and the ratio ours / reference.  Our losses
run the compiled fast path (``customloss.fast.compile_ahead`` before timing) unless
``CUSTOMLOSS_COMPILE=0`` is set, in which case the eager kernels are measured.

Usage::

    python benchmarks/run.py                 # full run, N = 4M (the issue's case)
    python benchmarks/run.py --quick         # N = 1M, fewer repetitions, no subprocess compiles
    python benchmarks/run.py --n 1000000 --reps 21 --only focal,mse
    python benchmarks/run.py --sweep         # focal time vs N (1e3 .. 1e8), SVG plot

``make bench`` runs the full benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import customloss as cl  # noqa: E402
from customloss import fast  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- losses
# The user's formulas, written in the DSL.


@cl.loss(params={"alpha": 0.25, "gamma": 2.0})
def focal(x, y, alpha, gamma):
    """Focal loss, term by term as in torchvision.ops.sigmoid_focal_loss."""
    p = cl.sigmoid(x)
    ce = -(y * cl.log(p) + (1 - y) * cl.log(1 - p))  # = BCE with logits
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * ce * (1 - p_t) ** gamma


DSL = {
    "focal": focal,
    "mse": cl.define("mse", "(p - y)**2", inputs=("p", "y")),
    "huber": cl.define(
        "huber",
        "where(abs(p - y) < delta, 0.5*(p - y)**2, delta*(abs(p - y) - 0.5*delta))",
        inputs=("p", "y"),
        params={"delta": 1.0},
    ),
    "bce_with_logits": cl.define(
        "bce_with_logits", "-(y*log_sigmoid(x) + (1 - y)*log_sigmoid(-x))", inputs=("x", "y")
    ),
    "naive_bce": cl.define(
        "naive_bce", "-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x)))", inputs=("x", "y")
    ),
    # BCE written with p_t (the way focal loss papers write it): LogMix
    "pt_bce": cl.define(
        "pt_bce", "-log(y*sigmoid(x) + (1 - y)*(1 - sigmoid(x)))", inputs=("x", "y")
    ),
    # Ridnik et al. 2021, asymmetric loss (ASL) with probability shifting.
    "asymmetric": cl.define(
        "asymmetric",
        "-(y*(1 - sigmoid(x))**gp*log(sigmoid(x))"
        " + (1 - y)*maximum(sigmoid(x) - m, 0)**gn*log(1 - maximum(sigmoid(x) - m, 0)))",
        inputs=("x", "y"),
        params={"gp": 0.0, "gn": 4.0, "m": 0.05},
    ),
    # Cauchy (Lorentzian) robust regression loss.
    "robust_cauchy": cl.define(
        "robust_cauchy", "log(1 + ((p - y)/c)**2)", inputs=("p", "y"), params={"c": 1.0}
    ),
}


def torchvision_focal(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """torchvision.ops.sigmoid_focal_loss (v0.19), reduction='mean', with torch ops."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * y + (1 - alpha) * (1 - y)
        loss = alpha_t * loss
    return loss.mean()


# --------------------------------------------------------------------------- timing


@contextlib.contextmanager
def eager_mode() -> Iterator[None]:
    """Force our eager kernels (CUSTOMLOSS_COMPILE=0) inside the block."""
    old = os.environ.get(fast.ENV_SWITCH)
    os.environ[fast.ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[fast.ENV_SWITCH]
        else:
            os.environ[fast.ENV_SWITCH] = old


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x, y) -> Callable[[], None]:
    """A closure running forward + backward of ``fn`` on (x, y)."""

    def run() -> None:
        x.grad = None
        fn(x, y).backward()

    return run


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class BackgroundLoad:
    """Average number of CPU cores kept busy by *other* processes between start and stop."""

    def __init__(self) -> None:
        self.cores: float | None = None
        self._busy, self._own, self._wall = _busy_seconds(), _own_seconds(), time.perf_counter()

    def stop(self) -> None:
        busy = _busy_seconds()
        if busy is None or self._busy is None:
            return
        wall = time.perf_counter() - self._wall
        other = (busy - self._busy) - (_own_seconds() - self._own)
        self.cores = max(0.0, other / wall) if wall > 0 else None


#: Set by :func:`interleaved`: the other processes' load during the last timed loop.
last_background: float | None = None
#: ``--wait-idle``: seconds to wait for a quiet machine before each timed loop.
wait_idle_s: float = 0.0


def wait_for_idle(max_seconds: float, threshold: float = 0.25) -> float | None:
    """Wait (up to ``max_seconds``) for a second in which others use < ``threshold`` cores."""
    deadline = time.monotonic() + max_seconds
    load = None
    while time.monotonic() < deadline:
        b = BackgroundLoad()
        time.sleep(1.0)
        b.stop()
        load = b.cores
        if load is None or load < threshold:
            break
    return load


def interleaved(
    impls: dict[str, Callable[[], None]], reps: int, device: torch.device, warmup: int = 2
) -> dict[str, float]:
    """Median milliseconds per implementation, timed round-robin with rotating order."""
    global last_background
    names = list(impls)
    for _ in range(warmup):
        for n in names:
            impls[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    if wait_idle_s > 0:
        wait_for_idle(wait_idle_s)
    gc.collect()
    gc.disable()
    load = BackgroundLoad()
    try:
        for r in range(reps):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                sync(device)
                t = time.perf_counter()
                impls[n]()
                sync(device)
                times[n].append(time.perf_counter() - t)
    finally:
        gc.enable()
        load.stop()
        last_background = load.cores
    return {n: statistics.median(v) * 1e3 for n, v in times.items()}


# --------------------------------------------------------------------------- table


@dataclass
class Row:
    case: str
    ours: str
    reference: str
    ref_value: str
    ratio: str
    goal: str
    verdict: str
    background: str = ""


def _fmt_ms(v: float) -> str:
    return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def ratio_row(case: str, ours: float, ref_name: str, ref: float, max_ratio: float | None) -> Row:
    r = ours / ref
    if max_ratio is None:
        goal, verdict = "(info)", ""
    elif max_ratio < 1:
        goal = f">= {1 / max_ratio:.1f}x faster"
        verdict = "PASS" if r <= max_ratio else "FAIL"
    else:
        goal = f"<= {max_ratio:.2f}x"
        verdict = "PASS" if r <= max_ratio else "FAIL"
    shown = f"{r:.2f}x" if r >= 0.1 or max_ratio is None else f"{r:.3f}x"
    if max_ratio is not None and max_ratio < 1:
        shown += f" ({1 / r:.1f}x faster)"
    bg = "" if last_background is None else f"{last_background:.1f}"
    return Row(case, _fmt_ms(ours), ref_name, _fmt_ms(ref), shown, goal, verdict, bg)


def print_table(title: str, rows: list[Row]) -> None:
    header = (
        "case",
        "ours",
        "reference",
        "reference value",
        "ratio",
        "goal",
        "pass/fail",
        "others' load (cores)",
    )
    data = [header] + [
        (r.case, r.ours, r.reference, r.ref_value, r.ratio, r.goal, r.verdict, r.background)
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in data) for i in range(len(header))]
    print(f"\n### {title}\n")
    for k, row in enumerate(data):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


# --------------------------------------------------------------------------- cases


def make_inputs(n: int, kind: str, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "logits":
        x = torch.randn(n, generator=g) * 3
        y = (torch.rand(n, generator=g) > 0.5).float()
    else:
        x = torch.randn(n, generator=g)
        y = torch.randn(n, generator=g)
    return x.to(device).requires_grad_(), y.to(device)


def prepare(loss: cl.Loss, x: torch.Tensor, y: torch.Tensor) -> float:
    """Compile ``loss`` for tensors like x, y; returns seconds (0 when eager)."""
    t = time.perf_counter()
    statuses = fast.compile_ahead(loss, x.detach(), y)
    bad = [s for s in statuses if s.state != "ready"]
    if bad:
        print(f"  note: {loss.name}: not compiled: {bad}", file=sys.stderr)
    return time.perf_counter() - t


def speed_cases(n: int, reps: int, only: set[str] | None, device: torch.device, extra: bool):
    rows: list[Row] = []
    compile_s: dict[str, float] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    if want("focal"):
        x, y = make_inputs(n, "logits", device)
        compile_s["focal"] = prepare(focal, x, y)
        impls = {
            "ours": fwd_bwd(focal, x, y),
            "bce": fwd_bwd(F.binary_cross_entropy_with_logits, x, y),
            "tv": fwd_bwd(torchvision_focal, x, y),
        }
        if extra:

            def ours_eager(x=x, y=y) -> None:
                with eager_mode():
                    fwd_bwd(focal, x, y)()

            impls["ours_eager"] = ours_eager
            t = time.perf_counter()
            tvc = torch.compile(torchvision_focal, dynamic=True)
            fwd_bwd(tvc, x, y)()
            compile_s["torch.compile(torchvision formula)"] = time.perf_counter() - t
            impls["tv_compiled"] = fwd_bwd(tvc, x, y)
        m = interleaved(impls, reps, device)
        rows.append(ratio_row("focal (DSL)", m["ours"], "F.bce_with_logits", m["bce"], 1.0))
        rows.append(
            ratio_row("focal (DSL)", m["ours"], "torchvision formula, eager", m["tv"], 1 / 3.5)
        )
        if extra:
            rows.append(
                ratio_row(
                    "focal, eager kernels (CUSTOMLOSS_COMPILE=0)",
                    m["ours_eager"],
                    "F.bce_with_logits",
                    m["bce"],
                    None,
                )
            )
            rows.append(
                ratio_row(
                    "torch.compile(torchvision formula)",
                    m["tv_compiled"],
                    "F.bce_with_logits",
                    m["bce"],
                    None,
                )
            )
        del x, y, impls

    builtins = {
        "mse": ("regression", F.mse_loss, "F.mse_loss"),
        "huber": ("regression", F.huber_loss, "F.huber_loss"),
        "bce_with_logits": (
            "logits",
            F.binary_cross_entropy_with_logits,
            "F.bce_with_logits",
        ),
    }
    for name, (kind, ref, ref_name) in builtins.items():
        if not want(name):
            continue
        x, y = make_inputs(n, kind, device)
        compile_s[name] = prepare(DSL[name], x, y)
        m = interleaved({"ours": fwd_bwd(DSL[name], x, y), "ref": fwd_bwd(ref, x, y)}, reps, device)
        rows.append(ratio_row(f"{name} (DSL)", m["ours"], ref_name, m["ref"], 1.3))

    for name, kind in (
        ("naive_bce", "logits"),
        ("pt_bce", "logits"),
        ("asymmetric", "logits"),
        ("robust_cauchy", "regression"),
    ):
        if not want(name):
            continue
        x, y = make_inputs(n, kind, device)
        xb, yb = make_inputs(n, "logits", device, seed=1)
        compile_s[name] = prepare(DSL[name], x, y)
        m = interleaved(
            {
                "ours": fwd_bwd(DSL[name], x, y),
                "ref": fwd_bwd(F.binary_cross_entropy_with_logits, xb, yb),
            },
            reps,
            device,
        )
        rows.append(ratio_row(f"{name} (DSL)", m["ours"], "F.bce_with_logits", m["ref"], 1.3))

    if want("cross_entropy"):
        ce = cl.get("cross_entropy")
        rows_n, classes = (65536, 1000) if n >= 1_000_000 else (max(n // 1000, 64), 1000)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows_n, classes, generator=g).to(device).requires_grad_()
        t = torch.randint(0, classes, (rows_n,), generator=g).to(device)
        compile_s["cross_entropy"] = prepare(ce, x, t)
        m = interleaved(
            {"ours": fwd_bwd(ce, x, t), "ref": fwd_bwd(F.cross_entropy, x, t)},
            max(3, min(reps, 7)),
            device,
        )
        rows.append(
            ratio_row(
                f"cross_entropy (built-in, DSL), index targets ({rows_n} x {classes})",
                m["ours"],
                "F.cross_entropy",
                m["ref"],
                1.2,
            )
        )
        del x, t
    return rows, compile_s


# --------------------------------------------------------------------------- memory


def _rss_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def peak_rss_mib(run: Callable[[], None], x: torch.Tensor) -> float | None:
    """Peak resident-memory growth of one call (Linux; needs /proc/self/clear_refs).

    glibc is told to serve every allocation >= 64 KiB with mmap, so freed tensors
    leave the resident set at once and the high-water mark sees live tensors only.
    """
    try:
        run()  # warm up: lazily built kernels, allocator state
        x.grad = None  # the gradient is counted: it is allocated during the call
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
        before = _rss_kib()["VmRSS"]
        run()
        return (_rss_kib()["VmHWM"] - before) / 1024
    except (OSError, KeyError):
        return None


def memory_child(n: int) -> None:
    """Runs in a fresh process started by :func:`memory_cases`; prints one line per case."""
    device = torch.device("cpu")
    for name, kind, ref in (
        ("focal", "logits", F.binary_cross_entropy_with_logits),
        ("mse", "regression", F.mse_loss),
    ):
        x, y = make_inputs(n, kind, device)
        prepare(DSL[name], x, y)
        ours = peak_rss_mib(fwd_bwd(DSL[name], x, y), x)
        theirs = peak_rss_mib(fwd_bwd(ref, x, y), x)
        print(f"MEM {name} {ours} {theirs}")
        del x, y


def memory_cases(n: int) -> list[Row]:
    """Peak memory of ours vs the built-in, measured in a fresh process (Linux only).

    ``MALLOC_MMAP_THRESHOLD_=65536`` makes glibc serve every tensor with its own
    mapping, so freed tensors leave the resident set at once.
    """
    if not sys.platform.startswith("linux"):
        return []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    names = {"focal": "F.bce_with_logits", "mse": "F.mse_loss"}
    rows = []
    for line in res.stdout.splitlines():
        if not line.startswith("MEM "):
            continue
        _, name, ours_s, theirs_s = line.split()
        if "None" in (ours_s, theirs_s):
            return []
        ours, theirs = float(ours_s), float(theirs_s)
        r = ours / theirs if theirs > 0 else float("inf")
        rows.append(
            Row(
                f"peak memory, {name} (DSL)",
                f"{ours:.1f} MiB",
                names[name],
                f"{theirs:.1f} MiB",
                f"{r:.2f}x",
                "<= 1.10x",
                "PASS" if r <= 1.10 else "FAIL",
            )
        )
    return rows


# --------------------------------------------------------------------------- fresh processes


def _python(code: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    # time the library as installed from a wheel, where pip has compiled the bytecode:
    # with PYTHONDONTWRITEBYTECODE (set in some sandboxes) an editable checkout would
    # recompile every customloss module in every fresh process (~20 ms)
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"subprocess failed:\n{res.stderr[-2000:]}")
    lines = res.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _wall(code: str) -> float:
    t = time.perf_counter()
    _python(code)
    return time.perf_counter() - t


FOCAL_SRC = (
    "import customloss as cl\n"
    "focal = cl.define('focal', '(alpha*y + (1 - alpha)*(1 - y))"
    "*(-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x))))"
    "*(1 - (sigmoid(x)*y + (1 - sigmoid(x))*(1 - y)))**gamma',"
    " inputs=('x', 'y'), params={'alpha': 0.25, 'gamma': 2.0})\n"
)


def process_cases(n: int, reps: int, compile_times: bool) -> list[Row]:
    rows = []
    # import time on top of the interpreter
    base, imp = [], []
    for _ in range(reps):
        base.append(_wall("pass"))
        imp.append(_wall("import customloss, sys; assert 'torch' not in sys.modules"))
    extra_ms = (statistics.median(imp) - statistics.median(base)) * 1e3
    rows.append(
        Row(
            "`import customloss` (torch not imported)",
            f"{extra_ms:.0f} ms",
            "interpreter start",
            _fmt_ms(statistics.median(base) * 1e3),
            "",
            "<= 300 ms extra",
            "PASS" if extra_ms <= 300 else "FAIL",
        )
    )
    # cold define + differentiate + generate code in a fresh process (torch and SymPy
    # already imported), with an empty and with a warm customloss disk cache
    # (customloss.diskcache); "+ lazy SymPy import" also times sympy.tensor.tensor, which
    # SymPy imports on the first Add it builds (its combinatorics tables)
    timed = "t = time.perf_counter()\n" + FOCAL_SRC + "focal.grad(); focal.source()\n"
    timed += "print((time.perf_counter() - t) * 1e3)\n"
    pre = "import time, torch, sympy, customloss, customloss.torch_backend\n"
    pre_full = (
        "import time, torch, sympy, sympy.tensor.tensor, customloss, customloss.torch_backend\n"
    )
    # "another loss first": a different loss is defined, differentiated and compiled
    # before the timer, so the timer holds only the work for this loss (no imports)
    pre_other = pre + (
        "import customloss as cl\n"
        "cauchy = cl.define('cauchy', 'log(1 + (x - y)**2/c**2)', inputs=('x', 'y'),"
        " params={'c': 1.0})\n"
        "cauchy.grad(); cauchy.source()\n"
    )
    runs = max(3, reps // 2)
    with tempfile.TemporaryDirectory() as cache_dir:
        _python(pre_full + timed, {"CUSTOMLOSS_CACHE_DIR": f"{cache_dir}/bytecode"})
        empty, empty_full, empty_other, warm, warm_full = [], [], [], [], []
        for i in range(runs):
            for j, (code, out) in enumerate(
                ((pre, empty), (pre_full, empty_full), (pre_other, empty_other))
            ):
                env = {"CUSTOMLOSS_CACHE_DIR": f"{cache_dir}/empty{i}-{j}"}
                out.append(float(_python(code + timed, env)))
        env = {"CUSTOMLOSS_CACHE_DIR": f"{cache_dir}/warm"}
        _python(pre + timed, env)  # fills the cache
        for _ in range(runs):
            warm.append(float(_python(pre + timed, env)))
            warm_full.append(float(_python(pre_full + timed, env)))
    for label, times in (
        ("empty disk cache: first SymPy expression of the process", empty),
        ("empty disk cache, SymPy's lazy import done", empty_full),
        ("empty disk cache, another loss defined first", empty_other),
        ("warm disk cache", warm),
        ("warm disk cache, SymPy's lazy import done", warm_full),
    ):
        cold = statistics.median(times)
        rows.append(
            Row(
                f"define + differentiate + codegen (focal, fresh process, {label})",
                f"{cold:.0f} ms",
                "",
                "",
                "",
                "<= 50 ms",
                "PASS" if cold <= 50 else "FAIL",
            )
        )
    # first call (default policy: eager first, compile in the background later)
    code = (
        "import time, torch\n" + FOCAL_SRC + f"x = torch.randn({n}, requires_grad=True)\n"
        f"y = (torch.rand({n}) > 0.5).float()\n"
        "t = time.perf_counter(); focal(x, y).backward()\n"
        "print((time.perf_counter() - t) * 1e3)\n"
    )
    first = statistics.median(float(_python(code)) for _ in range(3))
    rows.append(
        Row(
            f"first call, focal fwd+bwd, N={n} (fresh process)",
            f"{first:.0f} ms",
            "",
            "",
            "",
            "<= 1000 ms",
            "PASS" if first <= 1000 else "FAIL",
        )
    )
    if compile_times:
        # a training loop under the default policy: eager steps, a background compile,
        # then compiled steps; how long is the slowest step while the compile runs?
        code = (
            "import time, statistics, torch\nfrom customloss import fast\n"
            + FOCAL_SRC
            + f"x = torch.randn({n}, requires_grad=True)\n"
            f"y = (torch.rand({n}) > 0.5).float()\n"
            "steps = []\nt0 = time.perf_counter()\nswap = None\n"
            "while len(steps) < 400:\n"
            "    t = time.perf_counter(); x.grad = None; focal(x, y).backward()\n"
            "    st = [s for s in fast.status() if s.name.startswith('focal')]\n"
            "    steps.append((time.perf_counter() - t, st[0].state if st else 'cold'))\n"
            "    if swap is None and st and st[0].compiled_calls:\n"
            "        swap = time.perf_counter() - t0; k = len(steps)\n"
            "    if swap is not None and len(steps) >= k + 10: break\n"
            "eager = [d for d, s in steps[1:] if s in ('cold', 'queued')]\n"
            "during = [d for d, s in steps if s == 'compiling']\n"
            "after = [d for d, s in steps[k:]]\n"
            "print(steps[0][0] * 1e3, statistics.median(eager) * 1e3,"
            " max(during or [0]) * 1e3, len(during), statistics.median(after) * 1e3, swap)\n"
        )
        first_ms, eager_ms, worst_ms, n_during, after_ms, swap_s = (
            float(v) for v in _python(code).split()
        )
        rows.append(
            Row(
                f"training loop, focal N={n}: slowest step while compiling",
                f"{worst_ms:.0f} ms",
                "eager step (median)",
                f"{eager_ms:.0f} ms",
                f"{worst_ms / eager_ms:.1f}x",
                "no stall (<= 1000 ms)",
                "PASS" if worst_ms <= 1000 else "FAIL",
            )
        )
        rows.append(
            Row(
                f"training loop, focal N={n}: compiled kernel swapped in after",
                f"{swap_s:.1f} s ({n_during:.0f} steps while compiling)",
                "compiled step (median)",
                f"{after_ms:.1f} ms",
                "",
                "(info)",
                "",
            )
        )
        with tempfile.TemporaryDirectory() as cache:
            env = {"TORCHINDUCTOR_CACHE_DIR": cache}
            code = (
                "import time, torch\nfrom customloss import fast\n"
                + FOCAL_SRC
                + "t = time.perf_counter()\n"
                "s = fast.compile_ahead(focal)\n"
                "assert all(k.state == 'ready' for k in s), s\n"
                "print(time.perf_counter() - t)\n"
            )
            cold_c = float(_python(code, env))
            warm_c = float(_python(code, env))
        rows.append(
            Row(
                "compile_ahead(focal), empty Inductor disk cache",
                f"{cold_c:.1f} s",
                "",
                "",
                "",
                "(info)",
                "",
            )
        )
        rows.append(
            Row(
                "compile_ahead(focal), warm Inductor disk cache",
                f"{warm_c:.1f} s",
                "",
                "",
                "",
                "(info)",
                "",
            )
        )
    return rows


# --------------------------------------------------------------------------- GPU


def gpu_cases(n: int, reps: int, dev: torch.device | None = None) -> list[Row]:
    """Focal on CUDA vs the memory-bandwidth floor and torchvision (when present).

    ``dev`` defaults to the CUDA device; ``tests/test_benchmarks.py`` runs this code on
    the CPU with a tiny ``n`` so that a session that does get a GPU finds it working.
    """
    dev = dev or torch.device("cuda")
    x, y = make_inputs(n, "logits", dev)
    prepare(focal, x, y)
    src = torch.empty(n, device=dev)
    dst = torch.empty_like(src)
    copy = interleaved({"copy": lambda: dst.copy_(src)}, reps, dev)["copy"]
    bandwidth = 2 * src.numel() * src.element_size() / (copy / 1e3)  # bytes/s
    floor_ms = 3 * n * x.element_size() / bandwidth * 1e3  # read x, y; write grad
    try:
        from torchvision.ops import sigmoid_focal_loss

        def ref(a, b):
            return sigmoid_focal_loss(a, b, reduction="mean")

        ref_name = "torchvision.ops.sigmoid_focal_loss"
    except ImportError:
        ref, ref_name = torchvision_focal, "torchvision formula, eager"
    m = interleaved({"ours": fwd_bwd(focal, x, y), "tv": fwd_bwd(ref, x, y)}, reps, dev)
    return [
        ratio_row(f"GPU focal N={n}", m["ours"], "bandwidth floor (12 B/elem)", floor_ms, 1.5),
        ratio_row(f"GPU focal N={n}", m["ours"], ref_name, m["tv"], 0.1),
    ]


# --------------------------------------------------------------------------- sweep


def sweep(reps: int, max_exp: int, device: torch.device) -> None:
    sizes = [10**e for e in range(3, max_exp + 1)]
    series: dict[str, list[float]] = {
        "ours (focal, DSL)": [],
        "F.bce_with_logits": [],
        "torchvision formula": [],
    }
    print("\n### focal forward+backward vs N (median ms)\n")
    print("| N | ours | F.bce_with_logits | torchvision formula (eager) | others' load (cores) |")
    print("|---|---|---|---|---|")
    for n in sizes:
        x, y = make_inputs(n, "logits", device)
        prepare(focal, x, y)  # small and large inputs have separate kernels
        r = max(3, min(reps, int(3e8 // n)))
        m = interleaved(
            {
                "ours (focal, DSL)": fwd_bwd(focal, x, y),
                "F.bce_with_logits": fwd_bwd(F.binary_cross_entropy_with_logits, x, y),
                "torchvision formula": fwd_bwd(torchvision_focal, x, y),
            },
            r,
            device,
        )
        for k, v in m.items():
            series[k].append(v)
        print(
            f"| {n:.0e} | {m['ours (focal, DSL)']:.3f} | {m['F.bce_with_logits']:.3f} "
            f"| {m['torchvision formula']:.3f} "
            f"| {'?' if last_background is None else f'{last_background:.1f}'} |"
        )
        sys.stdout.flush()
        del x, y
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "focal_vs_n.svg"
    path.write_text(svg_loglog(sizes, series, "focal forward+backward, median ms vs N (CPU)"))
    print(f"\nplot written to {path.relative_to(ROOT)}")


def svg_loglog(xs: list[int], series: dict[str, list[float]], title: str) -> str:
    """A small dependency-free log-log line plot."""
    import math

    w, h, left, right, top, bottom = 640, 420, 70, 20, 40, 60
    lx = [math.log10(v) for v in xs]
    ally = [math.log10(v) for s in series.values() for v in s if v > 0]
    y0, y1 = math.floor(min(ally)), math.ceil(max(ally))
    x0, x1 = min(lx), max(lx)

    def px(v: float) -> float:
        return left + (math.log10(v) - x0) / (x1 - x0) * (w - left - right)

    def py(v: float) -> float:
        return top + (y1 - math.log10(v)) / (y1 - y0) * (h - top - bottom)

    colors = ["#d62728", "#1f77b4", "#7f7f7f", "#2ca02c"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for e in range(y0, y1 + 1):
        yy = py(10**e)
        out.append(
            f'<line x1="{left}" x2="{w - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{e} ms</text>')
    for v in xs:
        xx = px(v)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{h - bottom}" stroke="#eee"/>'
        )
        out.append(f'<text x="{xx:.1f}" y="{h - bottom + 18}" text-anchor="middle">{v:.0e}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">N (float32 elements)</text>')
    for i, (name, ys) in enumerate(series.items()):
        c = colors[i % len(colors)]
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys, strict=True))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{left + 10}" y="{top + 16 + 16 * i}" fill="{c}">{name}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"load average {load}; "
        f"{os.cpu_count()} CPU cores ({model or 'unknown model'}), torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {sys.version.split()[0]}, "
        f"fast path mode {fast.mode()!r}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=None, help="elements per tensor (default 4M; 1M with --quick)"
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions per case (default 15; 5 with --quick)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller N, fewer repetitions, no fresh-process compiles",
    )
    ap.add_argument(
        "--only", default=None, help="comma-separated case names (focal, mse, huber, ...)"
    )
    ap.add_argument(
        "--sweep", action="store_true", help="only the focal time-vs-N sweep and its plot"
    )
    ap.add_argument("--max-exp", type=int, default=8, help="largest N of the sweep is 10**max_exp")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each timed loop wait up to this many seconds for a quiet machine",
    )
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-processes",
        action="store_true",
        help="skip the fresh-process cases (import, cold start)",
    )
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    global wait_idle_s
    wait_idle_s = args.wait_idle
    n = args.n or (1 << 20 if args.quick else 4_000_000)
    reps = args.reps or (5 if args.quick else 15)
    device = torch.device("cpu")
    print(f"customloss benchmarks: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"N = {n}, repetitions = {reps}, medians, forward + backward, reduction='mean'")
    if args.sweep:
        sweep(reps, args.max_exp, device)
        return 0
    only = set(args.only.split(",")) if args.only else None
    rows, compile_s = speed_cases(n, reps, only, device, extra=not args.quick)
    print_table(f"CPU, float32, N = {n}", rows)
    mem = memory_cases(n) if only is None or "memory" in only else []
    if mem:
        print_table(f"peak resident memory growth of one forward+backward, N = {n}", mem)
    if not args.no_processes and (only is None or "startup" in only):
        print_table(
            "start-up (fresh processes)",
            process_cases(n, 5 if not args.quick else 3, not args.quick),
        )
    if torch.cuda.is_available() and (only is None or "gpu" in only):
        print_table("GPU", gpu_cases(64 * 2**20, reps))
    elif only is None:
        print("\nGPU cases: not run (no CUDA device).")
    if compile_s:
        print(
            "\ncompile_ahead time in this process (s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items())
        )
    if hasattr(os, "getloadavg"):
        print("load average at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    failed = [r for r in rows if r.verdict == "FAIL"]
    print(f"\n{len(failed)} speed goal(s) not met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
