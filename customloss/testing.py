"""Conformance kit for loss authors: :func:`check_loss`.

One call runs every check a loss shipped in a plugin (or loaded from a config file) must
pass before it goes into a long training job::

    from customloss.testing import check_loss

    check_loss(my_loss)          # raises ConformanceError listing every failed check
    report = check_loss(my_loss, raise_on_failure=False)
    print(report)

The checks (names usable in ``checks=`` and ``skip=``):

``reference``
    float64 values and gradients (torch) equal the loss's *plain* SymPy expression
    evaluated in mpmath, and ``Loss.grad()`` equals mpmath difference quotients of it.
``gradcheck``, ``gradgradcheck``
    ``torch.autograd.gradcheck``/``gradgradcheck`` in float64: once with the prediction,
    target, weight and every param (as 0-d tensors) requiring grad (``reduction="none"``),
    once with only the prediction (the fused training kernel, ``reduction="mean"``).
``numpy_torch``
    NumPy values and :meth:`Loss.gradient` equal torch values and autograd gradients for
    every input and param and every reduction.
``reductions``, ``weight``
    ``mean``/``sum`` equal the mean/sum of ``none``; ``weight`` multiplies before
    reducing (``mean == (weight * l).mean()``), also broadcast; ``Loss.torch()`` agrees.
``dtypes``
    float16/bfloat16/float32/float64 keep the dtype; half precision is computed in
    float32 (bit-identical to computing in float32 and rounding) and agrees with float64
    within the dtype's tolerance; values and gradients.
``devices``
    CPU and, when present, CUDA give the float64 CPU result on the input's device;
    input and target on different devices is an error naming the target.
``extreme_values``
    :func:`customloss.check.check` (the extreme-value scan) finds nothing.
``nan_propagation``
    a NaN prediction (or target) gives a NaN loss: never silently replaced.
``errors``
    shape mismatch, integer predictions, unknown reduction and unknown param raise
    ``ValueError``/``TypeError`` naming the problem.
``pickling``
    the loss and its ``torch.nn.Module`` survive ``pickle`` and ``copy.deepcopy``.
``thread_safety``
    8 threads calling a freshly built copy of the loss at once get bit-identical
    results, and each kernel is generated once (``customloss.loss.kernel_builds``).

Inputs: the checks run on "sensible" random inputs found for the loss (see
:func:`sample_inputs`): points where the loss is defined and smooth, so finite
differences mean something.  Extreme inputs are the business of ``extreme_values``.
"""

from __future__ import annotations

import copy
import importlib
import math
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from customloss import _validate
from customloss.check import (
    _adaptive,
    check,
    class_layout,
    class_point,
    mp_class_function,
    mp_function,
    true_derivative,
)

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "check_loss",
    "sample_inputs",
]

#: Every check, in the order they run.
CHECKS: tuple[str, ...] = (
    "reference",
    "gradcheck",
    "gradgradcheck",
    "numpy_torch",
    "reductions",
    "weight",
    "dtypes",
    "devices",
    "extreme_values",
    "nan_propagation",
    "errors",
    "pickling",
    "thread_safety",
)

#: Relative tolerance of each dtype against float64 (about two units in the last place
#: for the half types, whose result is a float32 result rounded once).
DTYPE_RTOL: dict[str, float] = {
    "float16": 2 * 2.0**-10,
    "bfloat16": 2 * 2.0**-7,
    "float32": 1e-5,
    "float64": 1e-12,
}


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check's name (one of :data:`CHECKS`).
        status: ``"passed"``, ``"failed"`` or ``"off"`` (not run: switched off by the
            caller; the detail says how).
        detail: what was checked, or what went wrong.
        seconds: how long it took.
    """

    name: str
    status: str
    detail: str
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    """Every check's result for one loss.

    Attributes:
        loss: the loss name.
        results: one :class:`CheckResult` per check, in :data:`CHECKS` order.
    """

    loss: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks."""
        return [r for r in self.results if r.status == "failed"]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check {name!r} in this report; checks: {', '.join(CHECKS)}")

    def __str__(self) -> str:
        n_fail = len(self.failures)
        head = f"check_loss({self.loss!r}): " + (
            "all checks passed" if not n_fail else f"{n_fail} check(s) failed"
        )
        lines = [head]
        for r in self.results:
            mark = {"passed": "PASS", "failed": "FAIL", "off": "OFF "}[r.status]
            body = r.detail.replace("\n", "\n      ")
            lines.append(f"  {mark} {r.name} ({r.seconds:.2f} s): {body}")
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A loss failed :func:`check_loss`; ``.report`` has every result."""

    def __init__(self, report: ConformanceReport) -> None:
        super().__init__(str(report))
        self.report = report


class _Failed(AssertionError):
    """A check's own failure (its message becomes the detail)."""


class _Context:
    """What every check needs: the loss, its params and the sample inputs."""

    def __init__(
        self,
        loss: Loss,
        params: dict[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        devices: Sequence[str],
        seed: int,
    ) -> None:
        self.loss = loss
        self.params = params
        self.x = x
        self.y = y
        self.devices = devices
        self.seed = seed
        self.pred, self.targ = loss.inputs
        self.names = (*loss.inputs, *loss.params)
        #: class-axis losses: class-index targets (one position is the ignore index)
        self.index: np.ndarray | None = None
        if loss.classes:
            rng = np.random.default_rng(seed + 3)
            self.index = rng.integers(0, x.shape[1], x.shape[0])
            self.index[-1] = int(loss.options.get("ignore_index", -100))
        self.sample_shape = x.shape[:1] if loss.classes else x.shape

    def tparams(
        self, dtype: Any, device: str = "cpu", grad: bool = False, full: bool = False
    ) -> dict[str, Any]:
        """Params as tensors: 0-d (vectors 1-d), or full input shape if ``full``."""
        import torch

        out = {}
        for k, v in self.params.items():
            t = torch.tensor(v, dtype=dtype, device=device)
            if full and not self.loss.classes:
                t = t.expand(self.x.shape).clone()
            out[k] = t.requires_grad_(grad)
        return out

    def targets(self) -> list[tuple[str, np.ndarray]]:
        """The targets to check with: probabilities, and for class-axis losses class
        indices (with one ignored position) too."""
        out = [("probability" if self.loss.classes else "target", self.y)]
        if self.index is not None:
            out.append(("class-index", self.index))
        return out

    def tensors(self, dtype: Any, device: str = "cpu", grad: bool = False) -> tuple[Any, Any]:
        import torch

        x = torch.tensor(self.x, dtype=torch.float64).to(device=device, dtype=dtype)
        y = torch.tensor(self.y, dtype=torch.float64).to(device=device, dtype=dtype)
        return x.requires_grad_(grad), y.requires_grad_(grad)

    def elementwise_params(self) -> list[np.ndarray]:
        """Each param broadcast to the input shape (for point-by-point references)."""
        return [
            np.broadcast_to(np.asarray(v, dtype=np.float64), self.x.shape)
            for v in self.params.values()
        ]


# ---------------------------------------------------------------------------
# sensible inputs
# ---------------------------------------------------------------------------
def _resolved_params(loss: Loss, params: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    _validate.check_param_names(
        loss.name, params, list(loss.params), phrase="has no param", caller="check_loss(): "
    )
    out: dict[str, Any] = {}
    for k, default in loss.params.items():
        v = params.get(k, default)
        if hasattr(v, "tolist"):  # NumPy/torch values
            v = v.tolist()
            v = tuple(v) if isinstance(v, list) else v
        out[k] = 1.0 if v is None else v  # a required param without a value: 1.0
    if loss.classes:
        # per-class params as vectors of C entries (the per-class path of the kernels):
        # a required one 1, 2, ..., C; a scalar the same value at every class
        n_classes = _n_classes(out)
        for k in loss.per_class:
            if k in out and not isinstance(out[k], (tuple, list)):
                given = params.get(k, loss.params[k])
                vals = (
                    [1.0 + c for c in range(n_classes)]
                    if given is None
                    else [float(out[k])] * n_classes
                )
                out[k] = tuple(vals)
    return out


def _shape(params: Mapping[str, Any]) -> tuple[int, int]:
    widths = {len(v) for v in params.values() if isinstance(v, (tuple, list))}
    if len(widths) > 1:
        raise ValueError(f"vector params of different lengths: {sorted(widths)}")
    return (3, widths.pop() if widths else 4)


def _n_classes(params: Mapping[str, Any]) -> int:
    """C for a class-axis loss: the length of the vector params, else 3."""
    vector = any(isinstance(v, (tuple, list)) for v in params.values())
    return _shape(params)[1] if vector else 3


def sample_inputs(
    loss: Loss,
    params: Mapping[str, Any] | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs at which ``loss`` is defined and smooth (float64 arrays).

    Candidates: predictions half from U(0.05, 0.95) (probabilities, small logits and
    residuals alike), half from N(0, 2); targets from {0, 1} and U(0.05, 0.95).  A
    candidate is kept when the loss's plain expression, evaluated in mpmath, is finite
    there and smooth: left and right difference quotients (step ``1e-4``) in the
    prediction, the target and each param agree, so no kink is within reach of the
    finite differences of ``gradcheck``.

    Args:
        loss: the loss.
        params: param values (default: the loss's defaults; required ones 1.0).
        shape: output shape; default ``(3, 4)`` (``(3, C)`` for length-C vector params).
        seed: random seed.

    Returns:
        ``(prediction, target)``.

    Raises:
        ValueError: fewer than a quarter of 50 candidates per element qualified.
    """
    import mpmath

    params = _resolved_params(loss, params)
    if loss.classes:
        return _sample_class_inputs(loss, params, shape or (4, _n_classes(params)), seed)
    shape = shape or _shape(params)
    n = int(np.prod(shape))
    cols = shape[-1]
    rng = np.random.default_rng(seed)
    fn = mp_function(loss.expr, tuple(loss.symbols[k] for k in (*loss.inputs, *loss.params)))
    xs: list[float] = []
    ys: list[float] = []
    tries = 0
    while len(xs) < n and tries < 50 * n:
        tries += 1
        col = len(xs) % cols
        x = float(rng.uniform(0.05, 0.95) if tries % 2 else rng.normal(0.0, 2.0))
        y = float(rng.choice([0.0, 1.0]) if rng.random() < 0.5 else rng.uniform(0.05, 0.95))
        pv = [float(v[col]) if isinstance(v, (tuple, list)) else float(v) for v in params.values()]
        point = [x, y, *pv]
        with mpmath.workdps(30):
            v = _adaptive(fn, point)
            if not mpmath.isfinite(v):
                continue
            if not all(_smooth(fn, point, i) for i in range(len(point))):
                continue
        xs.append(x)
        ys.append(y)
    if len(xs) < n:
        raise ValueError(
            f"loss {loss.name!r}: found only {len(xs)} of {n} inputs where the loss is defined "
            "and smooth among predictions from U(0.05, 0.95) and N(0, 2) and targets from "
            "{0, 1} and U(0.05, 0.95); pass params= that make it defined"
        )
    return np.array(xs).reshape(shape), np.array(ys).reshape(shape)


def _softmax(u: np.ndarray) -> np.ndarray:
    e = np.exp(u - u.max())
    return e / e.sum()


def _sample_class_inputs(
    loss: Loss, params: dict[str, Any], shape: tuple[int, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_inputs` for a class-axis loss: ``(N, C)`` rows.

    Candidate predictions: logit rows from N(0, 2) and probability rows (softmax of
    N(0, 1)), alternately; targets: probability rows (softmax of N(0, 1)), inside the
    simplex (an exact 0 is where ``xlogy`` switches branch: one-hot targets are
    checked as class indices instead).  A candidate is kept when the loss, written out
    over the C classes and evaluated in mpmath, is finite and smooth in every entry.
    """
    import mpmath

    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"class-axis inputs have shape (N, C) with C >= 2; got {shape}")
    n, n_classes = shape
    rng = np.random.default_rng(seed)
    fn = mp_class_function(loss, n_classes)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    tries = 0
    while len(xs) < n and tries < 50 * n:
        tries += 1
        x = rng.normal(0.0, 2.0, n_classes) if tries % 2 else _softmax(rng.normal(0, 1, n_classes))
        y = _softmax(rng.normal(0.0, 1.0, n_classes))
        point = class_point(loss, x, y, params)
        with mpmath.workdps(30):
            if not mpmath.isfinite(_adaptive(fn, point)):
                continue
            if not all(_smooth(fn, point, i) for i in range(len(point))):
                continue
        xs.append(x)
        ys.append(y)
    if len(xs) < n:
        raise ValueError(
            f"loss {loss.name!r}: found only {len(xs)} of {n} samples where the loss is "
            "defined and smooth among logit rows from N(0, 2) and probability rows, with "
            "probability targets; pass params= that make it defined"
        )
    return np.array(xs), np.array(ys)


def _smooth(fn: Callable[..., Any], point: Sequence[float], i: int, h: float = 1e-4) -> bool:
    import mpmath

    def at(dx: float) -> Any:
        q = list(point)
        q[i] = q[i] + dx * max(1.0, abs(point[i]))
        return _adaptive(fn, q)

    f0, fp, fm = at(0.0), at(h), at(-h)
    if not all(mpmath.isfinite(v) for v in (f0, fp, fm)):
        return False
    right, left = (fp - f0) / h, (f0 - fm) / h
    return bool(abs(right - left) <= 1e-2 * (1 + abs(right) + abs(left)))


# ---------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------
def _close(what: str, got: Any, want: Any, rtol: float, atol: float = 0.0) -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise _Failed(f"{what}: shape {got.shape}, expected {want.shape}")
    bad = ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    bad &= ~(np.isnan(got) & np.isnan(want))
    if bad.any():
        i = np.unravel_index(int(np.flatnonzero(bad)[0]), got.shape) if got.ndim else ()
        raise _Failed(
            f"{what}: {int(bad.sum())} of {got.size} differ (rtol={rtol:g}, atol={atol:g}); "
            f"first at index {tuple(int(j) for j in i)}: got {got[i]!r}, expected {want[i]!r}"
        )


def _check_reference(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    syms = tuple(loss.symbols[k] for k in ctx.names)
    plain = mp_function(loss.expr, syms)
    cols = [ctx.x, ctx.y, *ctx.elementwise_params()]
    points = [tuple(float(c.flat[i]) for c in cols) for i in range(ctx.x.size)]
    want = np.array([float(_adaptive(plain, p)) for p in points]).reshape(ctx.x.shape)
    x, y = ctx.tensors(torch.float64, grad=True)
    ps = ctx.tparams(torch.float64, grad=True, full=True)
    v = loss(x, y, reduction="none", **ps)
    _close("float64 value vs mpmath of Loss.expr", v.detach().numpy(), want, 1e-10, 1e-300)
    v.backward(torch.ones_like(v))
    tensors = {ctx.pred: x, ctx.targ: y, **ps}
    for i, n in enumerate(ctx.names):
        fd = np.array([true_derivative(plain, p, i).value for p in points]).reshape(ctx.x.shape)
        scale = float(np.abs(fd).max()) if fd.size else 0.0
        _close(
            f"d/d{n} (torch) vs mpmath difference quotients",
            tensors[n].grad.numpy(),
            fd,
            1e-7,
            1e-12 * scale,
        )
        sym = mp_function(loss.grad(n), syms)
        shown = np.array([float(_adaptive(sym, p)) for p in points]).reshape(ctx.x.shape)
        _close(f"Loss.grad({n!r}) vs mpmath difference quotients", shown, fd, 1e-7, 1e-12 * scale)
    return (
        f"{ctx.x.size} points: value and d/d({', '.join(ctx.names)}) match mpmath "
        "(Loss.expr, Loss.grad and difference quotients)"
    )


def _gradcheck_fns(ctx: _Context, gradgrad: bool) -> str:
    import torch

    fn_check = torch.autograd.gradgradcheck if gradgrad else torch.autograd.gradcheck
    loss = ctx.loss
    names = list(ctx.loss.params)
    x, y = ctx.tensors(torch.float64, grad=True)
    rng = np.random.default_rng(ctx.seed + 1)
    w = torch.tensor(rng.uniform(0.5, 1.5, ctx.x.shape), dtype=torch.float64, requires_grad=True)
    ps = list(ctx.tparams(torch.float64, grad=True).values())

    def everything(x: Any, y: Any, w: Any, *ps: Any) -> Any:
        return loss(x, y, reduction="none", weight=w, **dict(zip(names, ps, strict=True)))

    def prediction_only(x: Any) -> Any:
        return loss(x, y.detach(), reduction="mean", **ctx.params)

    what = "gradgradcheck" if gradgrad else "gradcheck"
    for label, f, args in (
        ("prediction, target, weight and params (reduction='none')", everything, (x, y, w, *ps)),
        ("prediction only, fused kernel (reduction='mean')", prediction_only, (x,)),
    ):
        try:
            fn_check(f, args, eps=1e-6, atol=1e-5, rtol=1e-3)
        except Exception as exc:  # GradcheckError or a crash inside backward
            msg = str(exc).strip().splitlines()
            raise _Failed(f"{what} w.r.t. {label} failed: {' '.join(msg[:6])}") from None
    return f"float64, {ctx.x.size} points: all inputs, weight and params; and the fused path"


def _check_gradcheck(ctx: _Context) -> str:
    return _gradcheck_fns(ctx, gradgrad=False)


def _check_gradgradcheck(ctx: _Context) -> str:
    return _gradcheck_fns(ctx, gradgrad=True)


def _check_numpy_torch(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    for reduction in ("none", "mean", "sum"):
        full = reduction == "none"
        x, y = ctx.tensors(torch.float64, grad=True)
        ps = ctx.tparams(torch.float64, grad=True, full=full)
        v = loss(x, y, reduction=reduction, **ps)
        nv = loss(ctx.x, ctx.y, reduction=reduction, **ctx.params)
        _close(
            f"NumPy vs torch value (reduction={reduction!r})", nv, v.detach().numpy(), 1e-10, 1e-12
        )
        v.backward(torch.ones_like(v))
        tensors = {ctx.pred: x, ctx.targ: y, **ps}
        for n in ctx.names:
            ng = loss.gradient(ctx.x, ctx.y, wrt=n, reduction=reduction, **ctx.params)
            _close(
                f"NumPy Loss.gradient(wrt={n!r}) vs torch autograd (reduction={reduction!r})",
                ng,
                tensors[n].grad.numpy(),
                1e-10,
                1e-12,
            )
    return f"values and gradients w.r.t. {', '.join(ctx.names)} for reductions none, mean, sum"


def _check_reductions(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    x, y = ctx.tensors(torch.float64)
    for backend, (a, b) in (("torch", (x, y)), ("numpy", (ctx.x, ctx.y))):
        none = np.asarray(loss(a, b, reduction="none", **ctx.params), dtype=np.float64)
        if none.shape != ctx.x.shape:
            raise _Failed(
                f"{backend}: reduction='none' has shape {none.shape}, input {ctx.x.shape}"
            )
        mean = float(loss(a, b, reduction="mean", **ctx.params))
        total = float(loss(a, b, reduction="sum", **ctx.params))
        _close(f"{backend}: mean vs none.mean()", mean, none.mean(), 1e-12)
        _close(f"{backend}: sum vs none.sum()", total, none.sum(), 1e-12)
        default = float(loss(a, b, **ctx.params))
        _close(f"{backend}: the default reduction is mean", default, mean, 0.0)
    # Loss.torch() keeps params as float64 buffers: the module equals the loss called
    # with the same param values
    buffers = {k: torch.tensor(v, dtype=torch.float64) for k, v in ctx.params.items()}
    for reduction in ("none", "mean", "sum"):
        module = loss.torch(reduction=reduction, **ctx.params)
        _close(
            f"Loss.torch(reduction={reduction!r})",
            module(x, y).numpy(),
            loss(x, y, reduction=reduction, **buffers).numpy(),
            1e-12,
        )
    return "mean and sum equal the mean and sum of 'none' (torch, numpy, Loss.torch())"


def _check_weight(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    rng = np.random.default_rng(ctx.seed + 2)
    w_full = rng.uniform(0.0, 2.0, ctx.x.shape)
    w_row = rng.uniform(0.0, 2.0, ctx.x.shape[-1:])
    x, y = ctx.tensors(torch.float64)
    for backend, (a, b), wrap in (
        ("torch", (x, y), lambda w: torch.tensor(w, dtype=torch.float64)),
        ("numpy", (ctx.x, ctx.y), lambda w: w),
    ):
        none = np.asarray(loss(a, b, reduction="none", **ctx.params), dtype=np.float64)
        for label, w in (("full-shape", w_full), ("broadcast", w_row)):
            wl = np.broadcast_to(w, ctx.x.shape) * none
            for reduction, want in (("mean", wl.mean()), ("sum", wl.sum()), ("none", wl)):
                got = np.asarray(loss(a, b, reduction=reduction, weight=wrap(w), **ctx.params))
                _close(
                    f"{backend}: {label} weight, reduction={reduction!r}", got, want, 1e-12, 1e-300
                )
        ones = np.asarray(loss(a, b, weight=wrap(np.ones(ctx.x.shape)), **ctx.params))
        _close(f"{backend}: weight of ones", ones, np.asarray(loss(a, b, **ctx.params)), 1e-15)
    return "mean == (weight * l).mean() and sum == (weight * l).sum(), full and broadcast weights"


def _check_dtypes(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    notes = []
    for name in ("float16", "bfloat16", "float32", "float64"):
        dt = getattr(torch, name)
        rtol = DTYPE_RTOL[name]
        x, y = ctx.tensors(dt, grad=True)
        # params given as numbers are converted to the compute dtype (float32 for the
        # half types: beta = 0.999 is not rounded to bfloat16's 1.0); the references use
        # the same values
        cdt = torch.float64 if name == "float64" else torch.float32
        rounded = {k: torch.tensor(v, dtype=cdt).double() for k, v in ctx.params.items()}
        v = loss(x, y, reduction="none", **ctx.params)
        if v.dtype != dt:
            raise _Failed(f"{name} input gave a {v.dtype} loss")
        v.backward(torch.ones_like(v))
        if x.grad is None or x.grad.dtype != dt:
            raise _Failed(f"{name} input got a gradient of dtype {getattr(x.grad, 'dtype', None)}")
        # the float64 reference at the same (rounded) inputs
        x64 = x.detach().double().requires_grad_()
        v64 = loss(x64, y.detach().double(), reduction="none", **rounded)
        v64.backward(torch.ones_like(v64))
        for what, got, want in (
            ("value", v.detach(), v64.detach()),
            ("d/dinput", x.grad, x64.grad),
        ):
            want_np = want.numpy()
            scale = float(np.abs(want_np).max()) if want_np.size else 0.0
            _close(f"{name} {what} vs float64", got.double().numpy(), want_np, rtol, rtol * scale)
        if name in ("float16", "bfloat16"):
            # policy: computed in float32, rounded once to the half type
            x32 = x.detach().float().requires_grad_()
            v32 = loss(
                x32,
                y.detach().float(),
                reduction="none",
                **{k: t.float() for k, t in rounded.items()},
            )
            v32.backward(torch.ones_like(v32))
            for what, got, want in (
                ("value", v.detach(), v32.detach().to(dt)),
                ("d/dinput", x.grad, x32.grad.to(dt)),
            ):
                diff = (got != want) & ~(torch.isnan(got) & torch.isnan(want))
                if diff.any():
                    raise _Failed(
                        f"{name} {what} differs from the float32 result rounded to "
                        f"{name} at {int(diff.sum())} points (half precision must be "
                        "computed in float32)"
                    )
            mean = loss(x.detach(), y.detach(), **ctx.params)
            mean32 = loss(
                x.detach().float(), y.detach().float(), **{k: t.float() for k, t in rounded.items()}
            )
            if mean.dtype != dt or not torch.equal(mean, mean32.to(dt)):
                raise _Failed(f"{name} mean is not the float32 mean rounded to {name}")
        notes.append(f"{name} (rtol {rtol:.1e})")
    # NumPy keeps float16/float32 too
    for name in ("float16", "float32"):
        got = loss(ctx.x.astype(name), ctx.y.astype(name), reduction="none", **ctx.params)
        if np.asarray(got).dtype != np.dtype(name):
            raise _Failed(f"NumPy {name} input gave a {np.asarray(got).dtype} loss")
    return "torch " + ", ".join(notes) + "; half = float32 rounded once; NumPy keeps float16/32"


def _check_devices(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    x, y = ctx.tensors(torch.float64, grad=True)
    ref = loss(x, y, reduction="none", **ctx.params)
    ref.backward(torch.ones_like(ref))
    seen = []
    for device in ctx.devices:
        xd, yd = ctx.tensors(torch.float64, device=device, grad=True)
        v = loss(xd, yd, reduction="none", **ctx.params)
        if v.device != xd.device:
            raise _Failed(f"input on {xd.device} gave a loss on {v.device}")
        v.backward(torch.ones_like(v))
        if xd.grad.device != xd.device:
            raise _Failed(f"input on {xd.device} got a gradient on {xd.grad.device}")
        rtol = 1e-12 if xd.device.type == "cpu" else 1e-9
        _close(
            f"{device} value vs CPU", v.detach().cpu().numpy(), ref.detach().numpy(), rtol, 1e-300
        )
        _close(f"{device} d/dinput vs CPU", xd.grad.cpu().numpy(), x.grad.numpy(), rtol, 1e-300)
        module = loss.torch(**ctx.params).to(device)
        mv = module(xd.detach(), yd.detach())
        if mv.device != xd.device:
            raise _Failed(f"Loss.torch().to({device!r}) gave a loss on {mv.device}")
        seen.append(str(xd.device))
        if xd.device.type != "cpu":
            try:
                loss(xd.detach(), y.detach(), **ctx.params)
            except ValueError as exc:
                if "target" not in str(exc):
                    raise _Failed(
                        f"input on {xd.device}, target on cpu: the error does not "
                        f"name the target: {exc}"
                    ) from None
            else:
                raise _Failed(f"input on {xd.device} and target on cpu was accepted")
    cuda = "CUDA present" if torch.cuda.is_available() else "no CUDA on this machine"
    return f"devices {', '.join(seen)} ({cuda})"


def _check_extreme_values(ctx: _Context, **options: Any) -> str:
    reports = []
    options.setdefault("max_problems", 200)  # a verdict, not an inventory: bounded cost
    for device in ctx.devices:
        report = check(ctx.loss, device=device, **options)
        if not report.ok:
            raise _Failed(report.format(limit=15))
        reports.append(report)
    return "; ".join(r.summary() for r in reports)


def _check_nan_propagation(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    depends_on_target = loss.symbols[ctx.targ] in loss.expr.free_symbols
    cases = [("prediction", 0)] + ([("target", 1)] if depends_on_target else [])
    for label, which in cases:
        a, b = ctx.x.copy(), ctx.y.copy()
        (a, b)[which].flat[0] = np.nan
        for backend, (p, t) in (
            ("numpy", (a, b)),
            ("torch", (torch.tensor(a), torch.tensor(b))),
        ):
            v = np.asarray(loss(p, t, reduction="none", **ctx.params), dtype=np.float64)
            if not np.isnan(v.flat[0]):
                raise _Failed(
                    f"{backend}: a NaN {label} gave the finite loss {v.flat[0]!r}: "
                    "NaN must propagate, never be silently replaced"
                )
            if np.isnan(v.flat[1:]).any():
                raise _Failed(f"{backend}: a NaN {label} at one point spread to others")
            m = float(loss(p, t, **ctx.params))
            if not math.isnan(m):
                raise _Failed(f"{backend}: a NaN {label} gave the finite mean {m!r}")
    checked = " and ".join(label for label, _ in cases)
    return f"a NaN {checked} gives NaN there (numpy, torch), and only there"


def _expect(
    exc_type: type[Exception], needles: Iterable[str], fn: Callable[[], Any], what: str
) -> None:
    try:
        fn()
    except exc_type as exc:
        msg = str(exc)
        missing = [n for n in needles if n not in msg]
        if missing:
            raise _Failed(
                f"{what}: the {exc_type.__name__} does not mention {missing[0]!r}: {msg}"
            ) from None
        return
    except Exception as exc:
        raise _Failed(
            f"{what}: raised {type(exc).__name__} instead of {exc_type.__name__}: {exc}"
        ) from None
    raise _Failed(f"{what}: no {exc_type.__name__} was raised")


def _check_errors(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    x, y = ctx.tensors(torch.float64)
    for backend, (a, b) in (("torch", (x, y)), ("numpy", (ctx.x, ctx.y))):
        bt = b.T if b.ndim == 2 and b.shape[0] != b.shape[1] else b.reshape(-1)
        _expect(
            ValueError,
            (str(tuple(a.shape)), str(tuple(bt.shape))),
            lambda a=a, bt=bt: loss(a, bt, **ctx.params),
            f"{backend}: input/target shape mismatch",
        )
        ai = a.long() if backend == "torch" else a.astype(np.int64)
        _expect(
            TypeError,
            (),
            lambda ai=ai, b=b: loss(ai, b, **ctx.params),
            f"{backend}: integer predictions",
        )
        _expect(
            ValueError,
            ("'mean'", "'avg'"),
            lambda a=a, b=b: loss(a, b, reduction="avg", **ctx.params),
            f"{backend}: unknown reduction",
        )
        _expect(
            TypeError,
            ("not_a_param_xyz",),
            lambda a=a, b=b: loss(a, b, not_a_param_xyz=1.0, **ctx.params),
            f"{backend}: unknown param",
        )
    return "shape mismatch, integer predictions, unknown reduction and unknown param are refused"


def _check_pickling(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    x, y = ctx.tensors(torch.float64)
    want = loss(x, y, reduction="none", **ctx.params)
    for how, clone in (
        ("pickle", lambda o: pickle.loads(pickle.dumps(o))),
        ("deepcopy", copy.deepcopy),
    ):
        try:
            other = clone(loss)
        except Exception as exc:
            raise _Failed(f"{how} of the Loss failed: {type(exc).__name__}: {exc}") from None
        same = (other.name, other.inputs, other.params, str(other.expr))
        if same != (loss.name, loss.inputs, loss.params, str(loss.expr)):
            raise _Failed(f"{how} changed the Loss: {same!r}")
        got = other(x, y, reduction="none", **ctx.params)
        if not torch.equal(got, want):
            raise _Failed(f"{how}d Loss computes different values")
        _close(
            f"{how}d Loss, NumPy",
            other(ctx.x, ctx.y, **ctx.params),
            loss(ctx.x, ctx.y, **ctx.params),
            0.0,
        )
        module = loss.torch(**ctx.params)
        try:
            m2 = clone(module)
        except Exception as exc:
            raise _Failed(f"{how} of Loss.torch() failed: {type(exc).__name__}: {exc}") from None
        if not torch.equal(m2(x, y), module(x, y)):
            raise _Failed(f"{how}d Loss.torch() computes different values")
    return "Loss and Loss.torch() survive pickle and copy.deepcopy with identical results"


_fresh_counter = 0
_fresh_lock = threading.Lock()


def _fresh_copy(loss: Loss) -> Loss:
    """The same loss with renamed inputs: same mathematics, nothing compiled yet."""
    global _fresh_counter
    from customloss import dsl
    from customloss.loss import Loss as LossClass

    with _fresh_lock:
        _fresh_counter += 1
        tag = _fresh_counter
    renamed = {n: f"{n}_fresh{tag}" for n in loss.inputs}
    sub = {loss.symbols[n]: dsl.symbol(m) for n, m in renamed.items()}
    expr = loss.expr.xreplace(sub)
    extra: dict[str, Any] = {}
    if loss.classes:
        implicit = {k for k, v in loss.params.items() if v is None or isinstance(v, tuple)}
        imw = loss.index_mean_weight
        extra = {
            "classes": True,
            "class_params": [k for k in loss.per_class if k in loss.params and k not in implicit],
            "index_mean_weight": None if imw is None else imw.xreplace(sub),
            "domains": {renamed.get(k, k): d for k, d in loss.domains.items()},
        }
    fresh = LossClass(
        loss.name,
        expr,
        inputs=tuple(renamed.values()),
        params=loss.params,
        doc=loss.doc,
        references=loss.references,
        **extra,
    )
    fresh.options = dict(loss.options)
    return fresh


def _check_thread_safety(ctx: _Context, threads: int = 8) -> str:
    import torch

    loss_module = importlib.import_module("customloss.loss")

    def work(fresh: Loss) -> tuple[Any, ...]:
        x, y = ctx.tensors(torch.float64, grad=True)
        v = fresh(x, y, reduction="none", **ctx.params)
        v.sum().backward()
        nv = fresh(ctx.x, ctx.y, reduction="none", **ctx.params)
        return v.detach().numpy(), x.grad.numpy(), np.asarray(nv)

    # how many kernels one caller generates, measured on one fresh copy ...
    before = loss_module.kernel_builds
    single = work(_fresh_copy(ctx.loss))
    per_call = loss_module.kernel_builds - before
    # ... and on another, with `threads` callers at once
    fresh = _fresh_copy(ctx.loss)
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(fresh)
        except Exception:
            errors.append(traceback.format_exc(limit=3))

    before = loss_module.kernel_builds
    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    built = loss_module.kernel_builds - before
    if errors:
        raise _Failed(f"{len(errors)} of {threads} threads raised:\n{errors[0]}")
    for i, r in enumerate(results[1:], start=1):
        for a, b, what in zip(r, results[0], ("value", "gradient", "NumPy value"), strict=True):
            if not np.array_equal(a, b, equal_nan=True):
                raise _Failed(f"thread {i} got a different {what} than thread 0")
    if built != per_call:
        raise _Failed(
            f"{threads} threads at once generated {built} kernels; one caller "
            f"generates {per_call}: the compile cache is not once-per-kernel"
        )
    for a, b, what in zip(results[0], single, ("value", "gradient", "NumPy value"), strict=True):
        _close(f"threaded {what} vs a single caller", a, b, 1e-12, 1e-300)
    return f"{threads} threads: identical results, {built} kernel(s) generated (as for one caller)"


_CHECK_FUNCTIONS: dict[str, Callable[..., str]] = {
    "reference": _check_reference,
    "gradcheck": _check_gradcheck,
    "gradgradcheck": _check_gradgradcheck,
    "numpy_torch": _check_numpy_torch,
    "reductions": _check_reductions,
    "weight": _check_weight,
    "dtypes": _check_dtypes,
    "devices": _check_devices,
    "extreme_values": _check_extreme_values,
    "nan_propagation": _check_nan_propagation,
    "errors": _check_errors,
    "pickling": _check_pickling,
    "thread_safety": _check_thread_safety,
}


# ---------------------------------------------------------------------------
# class-axis losses (classes=True): the checks that differ
# ---------------------------------------------------------------------------
def _class_truth(
    ctx: _Context,
) -> tuple[Callable[..., Any], dict[str, int], list[tuple[float, ...]]]:
    """The loss written out over the classes (mpmath), its layout and the sample points."""
    n_classes = ctx.x.shape[1]
    fn = mp_class_function(ctx.loss, n_classes)
    _, offsets = class_layout(ctx.loss, n_classes)
    points = [class_point(ctx.loss, ctx.x[i], ctx.y[i], ctx.params) for i in range(len(ctx.x))]
    return fn, offsets, points


def _width(ctx: _Context, name: str) -> int:
    return ctx.x.shape[1] if name in ctx.loss.per_class else 1


def _index_norm(ctx: _Context) -> np.ndarray:
    """Per-sample denominators of the mean with class-index targets, from mpmath.

    1 per sample, or the loss's ``index_mean_weight`` (``sum_c w_c y_c``: torch's
    weighted mean) at the one-hot target; 0 at the ignored position.
    """
    loss, n_classes = ctx.loss, ctx.x.shape[1]
    eye = np.eye(n_classes)
    out = np.zeros(len(ctx.x))
    fn = mp_class_function(loss, n_classes, loss.index_mean_weight)
    for i, t in enumerate(ctx.index):
        if 0 <= t < n_classes:
            if loss.index_mean_weight is None:
                out[i] = 1.0
            else:
                out[i] = float(_adaptive(fn, class_point(loss, ctx.x[i], eye[t], ctx.params)))
    return out


def _class_check_reference(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    n, n_classes = ctx.x.shape
    fn, offsets, points = _class_truth(ctx)
    want = np.array([float(_adaptive(fn, p)) for p in points])
    x, y = ctx.tensors(torch.float64, grad=True)
    ps = ctx.tparams(torch.float64, grad=True)
    v = loss(x, y, reduction="none", **ps)
    # atol: a loss far below its terms (e.g. 3e-9 from logits times s = 30) is the
    # difference of O(1) numbers; float64 holds it to ~1e-15 absolute, not relative
    _close(
        "float64 value vs mpmath of Loss.expr (classes written out)",
        v.detach().numpy(),
        want,
        1e-10,
        1e-12,
    )
    # class-index targets: the one-hot row; the ignored position gives 0
    eye = np.eye(n_classes)
    onehot = [
        float(_adaptive(fn, class_point(loss, ctx.x[i], eye[t], ctx.params)))
        if 0 <= t < n_classes
        else 0.0
        for i, t in enumerate(ctx.index)
    ]
    vi = loss(x.detach(), torch.tensor(ctx.index), reduction="none", **ctx.params)
    _close(
        "float64 value with class-index targets vs mpmath at the one-hot target",
        vi.numpy(),
        onehot,
        1e-10,
        1e-12,
    )
    v.backward(torch.ones_like(v))
    tensors = {ctx.pred: x, ctx.targ: y, **ps}
    for name in ctx.names:
        width = _width(ctx, name)
        fd = np.array(
            [
                [true_derivative(fn, p, offsets[name] + c).value for c in range(width)]
                for p in points
            ]
        )
        scale = float(np.abs(fd).max()) if fd.size else 0.0
        grad = tensors[name].grad.numpy()
        # the inputs' gradients are per sample; a param's is the sum over samples
        want_g = fd if name in loss.inputs else fd.sum(axis=0).reshape(grad.shape)
        _close(
            f"d/d{name} (torch) vs mpmath difference quotients", grad, want_g, 1e-7, 1e-12 * scale
        )
        sym = loss.grad(name, given_target_sum=None)
        shown = np.array(
            [
                [
                    float(_adaptive(mp_class_function(loss, n_classes, sym, at=c), p))
                    for c in range(width)
                ]
                for p in points
            ]
        )
        _close(
            f"Loss.grad({name!r}) vs mpmath difference quotients", shown, fd, 1e-7, 1e-12 * scale
        )
    return (
        f"{n} samples of C={n_classes} classes: value (probability and class-index targets) "
        f"and d/d({', '.join(ctx.names)}) match mpmath (Loss.expr and Loss.grad with the "
        "class reductions written out, and difference quotients)"
    )


def _class_gradcheck_fns(ctx: _Context, gradgrad: bool) -> str:
    import torch

    fn_check = torch.autograd.gradgradcheck if gradgrad else torch.autograd.gradcheck
    loss = ctx.loss
    names = list(loss.params)
    x, y = ctx.tensors(torch.float64, grad=True)
    idx = torch.tensor(ctx.index)
    rng = np.random.default_rng(ctx.seed + 1)
    w = torch.tensor(
        rng.uniform(0.5, 1.5, ctx.sample_shape), dtype=torch.float64, requires_grad=True
    )
    ps = list(ctx.tparams(torch.float64, grad=True).values())

    def everything(x: Any, y: Any, w: Any, *ps: Any) -> Any:
        return loss(x, y, reduction="none", weight=w, **dict(zip(names, ps, strict=True)))

    def with_indices(x: Any, w: Any, *ps: Any) -> Any:
        return loss(x, idx, reduction="sum", weight=w, **dict(zip(names, ps, strict=True)))

    def prediction_only(x: Any) -> Any:
        return loss(x, idx, reduction="mean", **ctx.params)

    what = "gradgradcheck" if gradgrad else "gradcheck"
    for label, f, args in (
        (
            "prediction, probability target, weight and params (reduction='none')",
            everything,
            (x, y, w, *ps),
        ),
        (
            "prediction, weight and params, class-index targets (reduction='sum')",
            with_indices,
            (x, w, *ps),
        ),
        (
            "prediction only, class-index targets, fused kernel (reduction='mean')",
            prediction_only,
            (x,),
        ),
    ):
        try:
            fn_check(f, args, eps=1e-6, atol=1e-5, rtol=1e-3)
        except Exception as exc:  # GradcheckError or a crash inside backward
            msg = str(exc).strip().splitlines()
            raise _Failed(f"{what} w.r.t. {label} failed: {' '.join(msg[:6])}") from None
    return (
        f"float64, {ctx.x.shape[0]} samples of C={ctx.x.shape[1]}: probability and class-index "
        "targets (one ignored), weight and params; and the fused path"
    )


def _class_check_gradcheck(ctx: _Context) -> str:
    return _class_gradcheck_fns(ctx, gradgrad=False)


def _class_check_gradgradcheck(ctx: _Context) -> str:
    return _class_gradcheck_fns(ctx, gradgrad=True)


def _class_check_numpy_torch(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    for kind, target in ctx.targets():
        index = kind == "class-index"
        for reduction in ("none", "mean", "sum"):
            # the weighted mean of class-index targets has no param gradients (documented)
            params_grad = not (index and reduction == "mean" and loss.index_mean_weight is not None)
            x = torch.tensor(ctx.x, requires_grad=True)
            t = torch.tensor(target, requires_grad=not index)
            ps = ctx.tparams(torch.float64, grad=params_grad)
            v = loss(x, t, reduction=reduction, **ps)
            nv = loss(ctx.x, target, reduction=reduction, **ctx.params)
            where = f"{kind} targets, reduction={reduction!r}"
            _close(f"NumPy vs torch value ({where})", nv, v.detach().numpy(), 1e-10, 1e-12)
            v.backward(torch.ones_like(v))
            tensors = {ctx.pred: x, ctx.targ: t, **ps}
            for n in ctx.names:
                if (index and n == ctx.targ) or (n in loss.params and not params_grad):
                    continue
                ng = loss.gradient(ctx.x, target, wrt=n, reduction=reduction, **ctx.params)
                _close(
                    f"NumPy Loss.gradient(wrt={n!r}) vs torch autograd ({where})",
                    ng,
                    tensors[n].grad.numpy(),
                    1e-10,
                    1e-12,
                )
    return (
        f"values and gradients w.r.t. {', '.join(ctx.names)} for reductions none, mean, sum; "
        "probability and class-index targets (one ignored)"
    )


def _class_check_reductions(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    den = _index_norm(ctx).sum()
    for kind, target in ctx.targets():
        index = kind == "class-index"
        for backend, (a, b) in (
            ("torch", (torch.tensor(ctx.x), torch.tensor(target))),
            ("numpy", (ctx.x, target)),
        ):
            where = f"{backend}, {kind} targets"
            none = np.asarray(loss(a, b, reduction="none", **ctx.params), dtype=np.float64)
            if none.shape != ctx.sample_shape:
                raise _Failed(
                    f"{where}: reduction='none' has shape {none.shape}, the input without its "
                    f"class axis is {ctx.sample_shape}"
                )
            mean = float(loss(a, b, reduction="mean", **ctx.params))
            total = float(loss(a, b, reduction="sum", **ctx.params))
            if index:
                if none[ctx.index < 0].any():
                    raise _Failed(f"{where}: the ignored position has loss {none[ctx.index < 0]}")
                what = "weighted by index_mean_weight" if loss.index_mean_weight is not None else ""
                _close(
                    f"{where}: mean vs none.sum() / (denominator {what} from mpmath)",
                    mean,
                    none.sum() / den,
                    1e-12,
                )
            else:
                _close(f"{where}: mean vs none.mean()", mean, none.mean(), 1e-12)
            _close(f"{where}: sum vs none.sum()", total, none.sum(), 1e-12)
            _close(
                f"{where}: the default reduction is mean",
                float(loss(a, b, **ctx.params)),
                mean,
                0.0,
            )
        buffers = {k: torch.tensor(v, dtype=torch.float64) for k, v in ctx.params.items()}
        x, t = torch.tensor(ctx.x), torch.tensor(target)
        for reduction in ("none", "mean", "sum"):
            module = loss.torch(reduction=reduction, **ctx.params)
            _close(
                f"Loss.torch(reduction={reduction!r}), {kind} targets",
                module(x, t).numpy(),
                loss(x, t, reduction=reduction, **buffers).numpy(),
                1e-12,
            )
    return (
        "mean and sum equal the mean and sum of 'none' (class indices: the mean divides by "
        "the count of non-ignored samples or the index_mean_weight sum); torch, numpy, Loss.torch()"
    )


def _class_check_weight(ctx: _Context) -> str:
    import torch

    loss = ctx.loss
    rng = np.random.default_rng(ctx.seed + 2)
    w_full = rng.uniform(0.0, 2.0, ctx.sample_shape)
    w_one = rng.uniform(0.0, 2.0, (1,))
    den = _index_norm(ctx).sum()
    for kind, target in ctx.targets():
        for backend, (a, b), wrap in (
            ("torch", (torch.tensor(ctx.x), torch.tensor(target)), lambda w: torch.tensor(w)),
            ("numpy", (ctx.x, target), lambda w: w),
        ):
            none = np.asarray(loss(a, b, reduction="none", **ctx.params), dtype=np.float64)
            for label, w in (("per-sample", w_full), ("broadcast", w_one)):
                wl = np.broadcast_to(w, ctx.sample_shape) * none
                mean = wl.sum() / den if kind == "class-index" else wl.mean()
                for reduction, want in (("mean", mean), ("sum", wl.sum()), ("none", wl)):
                    got = np.asarray(loss(a, b, reduction=reduction, weight=wrap(w), **ctx.params))
                    _close(
                        f"{backend}, {kind} targets: {label} weight, reduction={reduction!r}",
                        got,
                        want,
                        1e-12,
                        1e-300,
                    )
    return (
        "weight multiplies each sample's loss before reducing (per-sample and broadcast "
        "weights; probability and class-index targets)"
    )


def _class_check_errors(ctx: _Context) -> str:
    import torch

    detail = _check_errors(ctx)
    loss = ctx.loss
    n_classes = ctx.x.shape[1]
    bad = ctx.index.copy()
    bad[0] = n_classes
    per_class = [k for k in loss.params if k in loss.per_class]
    for backend, a, wrap in (
        ("torch", torch.tensor(ctx.x), torch.tensor),
        ("numpy", ctx.x, np.asarray),
    ):
        _expect(
            ValueError,
            (f"class index {n_classes}",),
            lambda a=a, wrap=wrap: loss(a, wrap(bad), **ctx.params),
            f"{backend}: a class index outside [0, C)",
        )
        for k in per_class:
            wrong = {**ctx.params, k: wrap(np.ones(n_classes + 1))}
            _expect(
                ValueError,
                (repr(k),),
                lambda a=a, wrong=wrong, wrap=wrap: loss(a, wrap(ctx.index), **wrong),
                f"{backend}: per-class param {k!r} of length C + 1",
            )
    return detail + "; class index out of range and per-class params of the wrong length too"


_CLASS_CHECK_FUNCTIONS: dict[str, Callable[..., str]] = {
    "reference": _class_check_reference,
    "gradcheck": _class_check_gradcheck,
    "gradgradcheck": _class_check_gradgradcheck,
    "numpy_torch": _class_check_numpy_torch,
    "reductions": _class_check_reductions,
    "weight": _class_check_weight,
    "errors": _class_check_errors,
}


def default_devices() -> list[str]:
    """``["cpu"]``, plus ``"cuda"`` when torch sees a GPU."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def check_loss(
    loss: Loss,
    *,
    params: Mapping[str, Any] | None = None,
    checks: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    pickling: bool = True,
    devices: Sequence[str] | None = None,
    seed: int = 0,
    extreme_values: Mapping[str, Any] | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the conformance kit on ``loss``.

    Args:
        loss: the :class:`~customloss.loss.Loss` to check.
        params: param values to check at (default: the loss's defaults; a required
            param without a value gets 1.0).
        checks: the checks to run (default all of :data:`CHECKS`).
        skip: checks not to run (reported as ``off``).
        pickling: False switches the ``pickling`` check off (for losses whose
            serialisation is not supported yet); reported as ``off``.
        devices: torch devices (default CPU, plus CUDA when present).
        seed: seed of the sample inputs.
        extreme_values: keyword arguments for :func:`customloss.check.check`.
        raise_on_failure: raise :class:`ConformanceError` when a check fails.

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (and ``raise_on_failure``).
    """
    from customloss.loss import Loss

    if not isinstance(loss, Loss):
        raise TypeError(f"check_loss() needs a customloss Loss, got {type(loss).__name__}")
    try:
        import torch  # noqa: F401  (the kit's references and gradchecks are torch's)
    except ImportError:
        raise ImportError(
            "check_loss() needs torch (gradcheck and the torch backend are checked): "
            "pip install 'customloss[torch]'; customloss.check() scans NumPy alone"
        ) from None
    chosen = list(CHECKS if checks is None else checks)
    skip = set(skip)
    for name in (*chosen, *skip):
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; checks: {', '.join(CHECKS)}")
    resolved = _resolved_params(loss, params)
    changed = {k: v for k, v in resolved.items() if loss.params[k] != v}
    subject = loss.with_defaults(**changed) if changed else loss
    report = ConformanceReport(loss.name)
    try:
        x, y = sample_inputs(subject, resolved, seed=seed)
    except ValueError as exc:
        report.results.append(CheckResult("reference", "failed", f"no sensible inputs: {exc}"))
        if raise_on_failure:
            raise ConformanceError(report) from None
        return report
    ctx = _Context(subject, resolved, x, y, list(devices or default_devices()), seed)
    for name in CHECKS:
        if name not in chosen:
            continue
        if name in skip or (name == "pickling" and not pickling):
            how = "pickling=False" if name == "pickling" and not pickling else f"skip={name!r}"
            report.results.append(CheckResult(name, "off", f"switched off by the caller ({how})"))
            continue
        started = time.perf_counter()
        try:
            if name == "extreme_values":
                detail = _check_extreme_values(ctx, **dict(extreme_values or {}))
            else:
                functions = (
                    {**_CHECK_FUNCTIONS, **_CLASS_CHECK_FUNCTIONS}
                    if loss.classes
                    else _CHECK_FUNCTIONS
                )
                detail = functions[name](ctx)
            status = "passed"
        except _Failed as exc:
            status, detail = "failed", str(exc)
        except Exception as exc:
            tb = traceback.format_exc(limit=-2).strip().splitlines()
            status, detail = "failed", f"raised {type(exc).__name__}: {exc}\n" + "\n".join(tb[-4:])
        report.results.append(CheckResult(name, status, detail, time.perf_counter() - started))
    if raise_on_failure and not report.ok:
        raise ConformanceError(report)
    return report
