"""The extreme-value scan: where does a compiled loss give ``inf`` or ``nan``?

:func:`check` evaluates a :class:`~customloss.loss.Loss` and its gradients on a grid of
extreme inputs, in several dtypes and through every backend, and lists each point where
the compiled code returns ``inf`` or ``nan`` although the true value is finite (or
returns ``nan`` where the true value is infinite)::

    report = check(my_loss)
    assert report.ok, str(report)

What is scanned (all of it can be changed by arguments):

* predictions: :data:`PREDICTIONS` -- logits out to ``+-1e4``, probabilities at exactly
  0 and 1 and just inside, residuals out to ``+-1e30``;
* targets: :data:`TARGETS` ``(-1, 0, 0.5, 1)``, crossed with every prediction.  The scan
  does not know which targets a loss means to accept, so it tries the values that the
  usual conventions use (``{0, 1}`` labels, ``{-1, +1}`` labels, soft labels, regression
  targets); a point whose true value is undefined there is skipped, not reported;
* params: the defaults, then each param in turn set to each of :data:`PARAM_VALUES`
  (one at a time, the others at their defaults);
* dtypes ``float32``, ``float64`` and ``bfloat16``; backends ``numpy`` (value and
  :meth:`Loss.gradient <customloss.loss.Loss.gradient>`), ``torch`` (autograd with only the
  prediction requiring grad: the fused training kernel) and ``torch/full`` (autograd with
  the prediction, the target and every param requiring grad: the backward kernels).

What "the true value" is: every input is first rounded to the dtype being scanned; the
true value at that exact point is the loss's stable expression evaluated with mpmath at
adaptively increased precision (no overflow, no underflow: ``exp(1e4)`` is just a number
there).  Where that is undefined (``0 * log 0``) the limit is taken (:func:`true_value`).
True derivatives are one-sided difference quotients of that value in mpmath
(:func:`true_derivative`), so they do not depend on how SymPy writes the derivative.
A point is then reported when

* the output is ``inf``/``nan`` and the true value (or limit) is finite and fits the
  dtype (``|v| <= finfo(dtype).max``);
* the output is ``nan`` where the true value is infinite (``-log 0``) or beyond the
  dtype's range, or an ``inf`` of the wrong sign there (``inf`` of the right sign is the
  correctly rounded answer and is not reported);
* a backend raises an exception for a whole grid (reported once, with the message).

Points where the true value is undefined (``log`` of a negative number, a pole with
``+inf`` on one side and ``-inf`` on the other), or undefined at the point and infinite
nearby (``inf - inf``: nan and inf are equally right there), are skipped and counted in
:attr:`CheckReport.skipped`.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy

from customloss import _validate

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = [
    "DTYPES",
    "PARAM_VALUES",
    "PREDICTIONS",
    "TARGETS",
    "CheckReport",
    "Problem",
    "TrueValue",
    "check",
    "mp_function",
    "true_derivative",
    "true_value",
]

#: Prediction grid: logits to +-1e4, probabilities at and next to 0 and 1, residuals to +-1e30.
PREDICTIONS: tuple[float, ...] = (
    -1e30, -1e4, -100.0, -30.0, -5.0, -1.0, -0.5, 0.0, 1e-6, 0.25, 0.5, 0.75,
    1.0 - 1e-6, 1.0, 5.0, 30.0, 100.0, 1e4, 1e30,
)  # fmt: skip
#: Target grid, crossed with every prediction.
TARGETS: tuple[float, ...] = (-1.0, 0.0, 0.5, 1.0)
#: Values each param takes in turn (the others stay at their defaults).
PARAM_VALUES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Dtypes scanned by default.
DTYPES: tuple[str, ...] = ("float32", "float64", "bfloat16")
#: Backends scanned by default (``torch`` ones only when torch is installed).
BACKENDS: tuple[str, ...] = ("numpy", "torch", "torch/full")

_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
_NUMPY_DTYPES = ("float16", "float32", "float64")
# Largest finite value per dtype (bfloat16 has float32's exponent range, 8 mantissa bits).
_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}


@dataclass(frozen=True)
class Problem:
    """One point where a compiled loss returned ``inf``/``nan`` it should not have.

    Attributes:
        dtype: the dtype scanned (``"float32"``, ...).
        backend: ``"numpy"``, ``"torch"`` (only the prediction requires grad) or
            ``"torch/full"`` (everything requires grad).
        input: the prediction, as actually evaluated (rounded to ``dtype``);
            ``nan`` for a problem that concerns the whole grid (an exception).
        target: the target, as evaluated.
        params: the param values used at this point.
        quantity: ``"value"`` or ``"d/d<name>"``.
        got: what the backend returned.
        expected: the true value (or limit) rounded to float64; ``inf`` where it is
            infinite or beyond float64; ``nan`` for an exception.
        what: a sentence describing the problem.
    """

    dtype: str
    backend: str
    input: float
    target: float
    params: dict[str, float]
    quantity: str
    got: float
    expected: float
    what: str

    def where(self) -> str:
        """The point: input, target and params."""
        if math.isnan(self.input):
            at = "whole grid"
        else:
            at = f"input={_fmt(self.input)} target={_fmt(self.target)}"
        ps = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{at} {ps}" if ps else at

    def __str__(self) -> str:
        return f"{self.backend} {self.dtype} {self.where()}: {self.what}"


@dataclass
class CheckReport:
    """The result of :func:`check`.

    Attributes:
        loss: the loss name.
        device: the torch device the torch backends ran on.
        problems: every point reported (see :class:`Problem`).
        evaluated: how many (point, quantity, dtype, backend) results were inspected.
        skipped: how many non-finite results were at points where the true value is
            undefined (out of the loss's domain) and so were not judged.
        dtypes: the dtypes scanned.
        backends: the backends scanned.
        predictions: the prediction grid (before rounding to each dtype).
        targets: the target grid.
        param_sets: the param combinations scanned.
        quantities: ``"value"`` and the ``"d/d<name>"`` derivatives scanned.
    """

    loss: str
    device: str = "cpu"
    problems: list[Problem] = field(default_factory=list)
    evaluated: int = 0
    skipped: int = 0
    dtypes: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    predictions: tuple[float, ...] = ()
    targets: tuple[float, ...] = ()
    param_sets: list[dict[str, float]] = field(default_factory=list)
    quantities: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """One line: the verdict and what was scanned."""
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return (
            f"check({self.loss!r}): {verdict} in {self.evaluated:,} results "
            f"[{', '.join(self.quantities)}] over {len(self.predictions)} predictions x "
            f"{len(self.targets)} targets x {len(self.param_sets)} param sets; "
            f"dtypes {', '.join(self.dtypes)}; backends {', '.join(self.backends)} "
            f"(torch on {self.device}); "
            f"{self.skipped:,} non-finite results outside the domain skipped"
        )

    def format(self, limit: int | None = 40) -> str:
        """The summary, then the problems (at most ``limit`` lines).

        Problems that differ only in backend and dtype share a line, so a bug in the
        generated code shows once, with every backend and dtype it affects.
        """
        lines = [self.summary()]
        groups: dict[tuple[Any, ...], list[Problem]] = {}
        for p in self.problems:
            key = (p.input, p.target, tuple(p.params.items()), p.what)
            groups.setdefault(key, []).append(p)
        shown = list(groups.values()) if limit is None else list(groups.values())[:limit]
        for ps in shown:
            first = ps[0]
            backends = ",".join(dict.fromkeys(p.backend for p in ps))
            dtypes = ",".join(dict.fromkeys(p.dtype for p in ps))
            lines.append(f"  {first.where()}: {first.what}  [{backends}; {dtypes}]")
        if len(shown) < len(groups):
            rest = sum(len(g) for g in list(groups.values())[len(shown) :])
            lines.append(f"  ... and {rest} more (see .problems)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ---------------------------------------------------------------------------
# the true value: mpmath at adaptive precision
# ---------------------------------------------------------------------------
def _mp() -> Any:
    import mpmath

    return mpmath


def _mp_namespace() -> dict[str, Callable[..., Any]]:
    mp = _mp()

    def softplus(u: Any) -> Any:
        return u + mp.log1p(mp.exp(-u)) if u > 0 else mp.log1p(mp.exp(u))

    def logsumexp(*args: Any) -> Any:
        m = max(args)
        return m + mp.log(mp.fsum(mp.exp(a - m) for a in args))

    return {
        "Sigmoid": lambda u: 1 / (1 + mp.exp(-u)),
        "Softplus": softplus,
        "LogSumExp": logsumexp,
        "LogCosh": lambda u: mp.log(mp.cosh(u)),
        "log1p": mp.log1p,
        "expm1": mp.expm1,
    }


@functools.lru_cache(maxsize=512)
def mp_function(expr: sympy.Expr, args: tuple[sympy.Symbol, ...]) -> Callable[..., Any]:
    """``expr`` as a function of mpmath numbers (stable internal functions included)."""
    return sympy.lambdify(args, expr, modules=[_mp_namespace(), "mpmath"], dummify=True)


def _mp_eval(fn: Callable[..., Any], point: Sequence[Any]) -> Any:
    """``fn`` at ``point`` as an mpf; nan where undefined.

    A complex result anywhere (``log`` or a fractional power of a negative number) makes
    the point undefined, even when a factor 0 later cancels the imaginary part: the loss
    is a real function.
    """
    mp = _mp()
    try:
        v = fn(*point)
    except (ZeroDivisionError, ValueError, TypeError, OverflowError, ArithmeticError):
        return mp.nan
    if isinstance(v, (mp.mpc, complex)):
        return mp.nan
    try:
        return mp.mpf(v)
    except (TypeError, ValueError):
        return mp.nan


def _same(a: Any, b: Any, rel: float) -> bool:
    mp = _mp()
    if mp.isnan(a) or mp.isnan(b):
        return bool(mp.isnan(a) and mp.isnan(b))
    if mp.isinf(a) or mp.isinf(b):
        return bool(a == b)
    scale = max(abs(a), abs(b))
    return bool(scale == 0 or abs(a - b) <= rel * scale)


def _adaptive(fn: Callable[..., Any], point: Sequence[Any], start: int = 30) -> Any:
    """``fn`` at ``point``, doubling the precision until two precisions agree.

    Gives up at 960 digits and returns the last value (enough to tell finite from
    infinite, which is what the scan needs, when a true value of 0 keeps the digits of
    two precisions from agreeing).
    """
    mp = _mp()
    prev = None
    dps = start
    while dps <= 960:
        with mp.workdps(dps):
            v = _mp_eval(fn, [mp.mpf(x) for x in point])
        if prev is not None and _same(prev, v, 1e-12):
            return v
        prev = v
        dps *= 2
    return prev


@dataclass(frozen=True)
class TrueValue:
    """What :func:`true_value` found.

    Attributes:
        kind: ``"finite"``, ``"inf"`` or ``"undefined"`` (out of the domain, or a
            singularity whose one-sided limits disagree in sign or finiteness).
        value: the value rounded to float64 (``+-inf`` when beyond float64's range).
        limit: True when the value is a one-sided limit, the point itself undefined.
    """

    kind: str
    value: float
    limit: bool


_OFFSETS = ("1e-20", "1e-40", "1e-80")


def _settle(vals: Sequence[Any]) -> float | None:
    """The limit of values taken at offsets ``1e-20, 1e-40(, 1e-80)``, if they show one.

    Finite when the last two agree (values of the offsets' size count as 0); infinite
    when the magnitudes grow without settling (also logarithmically); None otherwise.
    """
    mp = _mp()
    if any(mp.isnan(v) for v in vals):
        return None
    f2, f3 = vals[-2:]
    if mp.isfinite(f2) and mp.isfinite(f3) and abs(f2 - f3) <= 1e-8 * max(1, abs(f3)):
        return 0.0 if abs(f3) < 1e-60 else float(f3)
    if len(vals) < 3:
        return None
    f1 = vals[0]
    if mp.isinf(f3) or (
        abs(f3) > abs(f2) > abs(f1)
        and abs(f3) - abs(f2) >= 0.5 * (abs(f2) - abs(f1))
        and (f3 > 0) == (f2 > 0)
    ):
        return math.copysign(math.inf, float(f3))
    return None


def _directions(n: int, moving: Sequence[int]) -> list[tuple[int, ...]]:
    """Sign vectors moving the coordinates in ``moving`` (all sign combinations)."""
    out: list[tuple[int, ...]] = []
    for signs in itertools.product((1, -1), repeat=len(moving)):
        d = [0] * n
        for i, s in zip(moving, signs, strict=True):
            d[i] = s
        out.append(tuple(d))
    return out


def _limits_along(
    fn: Callable[..., Any],
    domain: Callable[..., Any],
    point: Sequence[float],
    directions: Sequence[tuple[int, ...]],
) -> list[float]:
    """Limits of ``fn`` at ``point`` along each direction in which ``domain`` is defined."""
    mp = _mp()
    limits: list[float] = []
    for d in directions:
        vals = []
        for t in _OFFSETS:
            with mp.workdps(200):
                q = [
                    mp.mpf(x) + s * mp.mpf(t) * max(1, abs(mp.mpf(x)))
                    for x, s in zip(point, d, strict=True)
                ]
            if mp.isnan(_adaptive(domain, q, start=120)):
                break
            vals.append(_adaptive(fn, q, start=120))
        if len(vals) < len(_OFFSETS):
            continue
        limit = _settle(vals)
        if limit is not None:
            limits.append(limit)
    return limits


def true_value(
    fn: Callable[..., Any],
    point: Sequence[float],
    *,
    domain: Callable[..., Any] | None = None,
    moving: Sequence[int] = (0, 1),
) -> TrueValue:
    """The true value of ``fn`` at ``point`` or, where undefined there, its limit.

    Where ``fn`` is undefined at ``point`` (``0 * log 0``, ``0/0``), the point is moved
    by ``1e-20``, ``1e-40`` and ``1e-80`` (relative to ``max(1, |x|)``) in both
    directions: first the prediction alone (``moving[0]``), then the target alone, then
    both together, stopping at the first of these in which some direction counts.  A
    direction counts when ``domain`` (the loss value) is defined along it and the values
    either settle (a finite limit) or grow without settling (an infinite one).  If
    every direction that counts has a finite limit the value is finite (at a kink any
    finite subgradient is right); if all diverge with the same sign it is infinite;
    anything else (``+inf`` one side, ``-inf`` the other) is a singularity: undefined.

    Args:
        fn: a function of mpmath numbers (see :func:`mp_function`).
        point: float64 coordinates (exact binary values, as evaluated).
        domain: the function whose definedness decides which directions count;
            default ``fn``.
        moving: indices of the coordinates that may be moved, prediction first.

    Returns:
        A :class:`TrueValue`.
    """
    mp = _mp()
    v = _adaptive(fn, point)
    if not mp.isnan(v):
        return TrueValue("inf" if mp.isinf(v) else "finite", float(v), False)
    domain = fn if domain is None else domain
    stages = [(i,) for i in moving] + ([tuple(moving)] if len(moving) > 1 else [])
    for stage in stages:
        limits = _limits_along(fn, domain, point, _directions(len(point), stage))
        if not limits:
            continue
        if all(math.isfinite(x) for x in limits):
            return TrueValue("finite", limits[0], True)
        if all(x == limits[0] for x in limits):
            return TrueValue("inf", limits[0], True)
        break
    return TrueValue("undefined", math.nan, False)


def true_derivative(fn: Callable[..., Any], point: Sequence[float], index: int) -> TrueValue:
    """The true derivative of ``fn`` in coordinate ``index`` at ``point``.

    Computed from the value alone, by one-sided difference quotients in mpmath:
    ``(f(x + h) - f(x)) / h`` for ``h = +-1e-20, +-1e-40, +-1e-80`` (relative to
    ``max(1, |x|)``), each at adaptively increased precision; where ``f(x)`` itself is
    undefined (``0 * log 0``), ``(f(x + 2h) - f(x + h)) / h``.  This needs no symbolic
    derivative, so forms such as ``Max(0, p)**k / Max(0, p)`` (``0/0`` below the kink,
    where the true derivative is 0) cannot mislead it.  A side counts when the function
    is defined there and the quotients settle (a finite one-sided derivative) or grow
    without settling (an infinite one, also at a jump).  Every counting side finite:
    finite (at a kink any finite subgradient is right); all infinite with one sign:
    infinite; otherwise (``+inf`` one side, ``-inf`` the other, or no side counting)
    undefined.

    Args:
        fn: the loss value as a function of mpmath numbers (see :func:`mp_function`).
        point: float64 coordinates (exact binary values, as evaluated).
        index: the coordinate to differentiate in.

    Returns:
        A :class:`TrueValue`; ``limit`` is True when ``f`` itself is undefined at
        ``point`` (the derivative is then a limit too).
    """
    mp = _mp()
    fx = _adaptive(fn, point)
    at_point = bool(mp.isfinite(fx))
    sides: list[float] = []
    for sign in (1, -1):
        quotients = []
        for step in _OFFSETS:

            def quotient(*xs: Any, _step: str = step, _sign: int = sign) -> Any:
                h = _sign * mp.mpf(_step) * max(1, abs(xs[index]))
                a, b = list(xs), list(xs)
                a[index] = xs[index] + (h if at_point else 2 * h)
                b[index] = xs[index] + (0 if at_point else h)
                fa, fb = _mp_eval(fn, a), _mp_eval(fn, b)
                if not (mp.isfinite(fa) and mp.isfinite(fb)):
                    return mp.nan
                return (fa - fb) / h

            quotients.append(_adaptive(quotient, point, start=120))
            if len(quotients) == 2 and _same(quotients[0], quotients[1], 1e-8):
                break  # settled already: the smallest step adds nothing
        limit = _settle(quotients)
        if limit is not None:
            sides.append(limit)
    # limit=True: f itself is undefined at the point (its derivative is a limit too)
    if sides and all(math.isfinite(x) for x in sides):
        return TrueValue("finite", sides[0], not at_point)
    if sides and all(x == sides[0] for x in sides):
        return TrueValue("inf", sides[0], not at_point)
    return TrueValue("undefined", math.nan, False)


# ---------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------
def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name  # "float32", np.float32, np.dtype(...)
    except TypeError:
        name = str(dtype).replace("torch.", "")  # torch.bfloat16, "bfloat16"
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {', '.join(_DTYPE_NAMES)}")
    return name


def _round(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 ``values`` rounded to ``dtype`` (returned as float64)."""
    if dtype == "bfloat16":
        import torch

        return torch.as_tensor(values, dtype=torch.float64).to(torch.bfloat16).double().numpy()
    with np.errstate(over="ignore"):
        return values.astype(dtype).astype(np.float64)


def _param_sets(loss: Loss, values: Mapping[str, Iterable[float]] | None) -> list[dict[str, float]]:
    """The defaults, then each param set to each of its values in turn."""
    values = dict(values or {})
    _validate.check_param_names(
        loss.name, values, list(loss.params), phrase="has no param", caller="check(): "
    )
    base: dict[str, float] = {}
    candidates: dict[str, list[float]] = {}
    for name, default in loss.params.items():
        extra: list[float] = []
        if default is None:  # required: scan the candidates, start from 1
            start = 1.0
        elif isinstance(default, tuple):  # a per-class vector: scan its entries as scalars
            start, extra = default[0], list(default[1:])
        else:
            start = float(default)
        base[name] = start
        chosen = values.get(name, PARAM_VALUES)
        candidates[name] = [float(v) for v in (*extra, *chosen)]
    sets = [dict(base)]
    seen = {tuple(base.items())}
    for name, vals in candidates.items():
        for v in vals:
            s = {**base, name: v}
            key = tuple(s.items())
            if key not in seen:
                seen.add(key)
                sets.append(s)
    return sets


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return f"{x:.6g}"


# ---------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------
_Results = dict[str, np.ndarray]  # quantity -> float64 array of the backend's outputs


def _run_numpy(
    loss: Loss,
    p: np.ndarray,
    y: np.ndarray,
    params: dict[str, float],
    dtype: str,
    wrt: Sequence[str],
) -> _Results:
    x = p.astype(dtype)
    t = y.astype(dtype)
    ps = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    out = {"value": np.asarray(loss(x, t, reduction="none", **ps), dtype=np.float64)}
    for n in wrt:
        g = loss.gradient(x, t, wrt=n, reduction="none", **ps)
        out[f"d/d{n}"] = np.broadcast_to(np.asarray(g, dtype=np.float64), p.shape)
    return out


def _run_torch(
    loss: Loss,
    p: np.ndarray,
    y: np.ndarray,
    params: dict[str, float],
    dtype: str,
    wrt: Sequence[str],
    full: bool,
    device: str,
) -> _Results:
    import torch

    tdt = getattr(torch, dtype)
    pred, targ = loss.inputs
    # "torch": only the prediction requires grad (the fused training kernel);
    # "torch/full": everything in wrt does (the backward kernels).
    grads = tuple(wrt) if full else tuple(n for n in wrt if n == pred)
    x = torch.as_tensor(p, dtype=torch.float64).to(device=device, dtype=tdt)
    t = torch.as_tensor(y, dtype=torch.float64).to(device=device, dtype=tdt)
    x.requires_grad_(pred in grads)
    t.requires_grad_(targ in grads)
    ps: dict[str, Any] = {}
    for k, v in params.items():
        if k in grads:  # full shape, so the elementwise gradient comes back
            ps[k] = torch.full_like(x, v).detach().requires_grad_()
        else:
            ps[k] = torch.tensor(v, dtype=tdt, device=device)
    v = loss(x, t, reduction="none", **ps)
    out = {}
    if not full:
        out["value"] = v.detach().double().cpu().numpy()
    if grads:
        v.backward(torch.ones_like(v))
    tensors = {pred: x, targ: t, **ps}
    for n in grads:
        g = tensors[n].grad
        if g is None:
            raise RuntimeError(f"no gradient reached {n!r}")
        out[f"d/d{n}"] = g.double().cpu().numpy()
    return out


def _run(
    backend: str,
    loss: Loss,
    p: np.ndarray,
    y: np.ndarray,
    params: dict[str, float],
    dtype: str,
    wrt: Sequence[str],
    device: str,
) -> _Results:
    if backend == "numpy":
        return _run_numpy(loss, p, y, params, dtype, wrt)
    return _run_torch(loss, p, y, params, dtype, wrt, full=backend == "torch/full", device=device)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------
# the scan
# ---------------------------------------------------------------------------
def check(
    loss: Loss,
    *,
    predictions: Sequence[float] | None = None,
    targets: Sequence[float] | None = None,
    params: Mapping[str, Iterable[float]] | None = None,
    dtypes: Sequence[Any] = DTYPES,
    backends: Sequence[str] | None = None,
    wrt: Sequence[str] | None = None,
    device: str = "cpu",
) -> CheckReport:
    """Scan ``loss`` for ``inf``/``nan`` values and gradients at extreme inputs.

    Args:
        loss: the :class:`~customloss.loss.Loss` to scan.
        predictions: prediction grid; default :data:`PREDICTIONS`.
        targets: target grid, crossed with the predictions; default :data:`TARGETS`.
        params: values to try for each param (one param at a time, the others at their
            defaults); default :data:`PARAM_VALUES` for every param.
        dtypes: dtypes to scan (names, NumPy or torch dtypes); default :data:`DTYPES`.
            The NumPy backend scans the ones NumPy has (not bfloat16).
        backends: any of ``"numpy"``, ``"torch"``, ``"torch/full"``; default all (the
            torch ones only when torch is installed).
        wrt: names whose derivatives are scanned; default the prediction, the target and
            every param.
        device: the torch device the torch backends run on (``"cuda"``, ...).

    Returns:
        A :class:`CheckReport`; ``report.ok`` is true when nothing was found.

    References:
        The policy (which points count as problems) is described in the module docstring
        and in ``docs/reliability.md``.
    """
    from customloss.loss import Loss

    if not isinstance(loss, Loss):
        raise TypeError(f"check() needs a customloss Loss, got {type(loss).__name__}")
    if getattr(loss, "classes", False):
        raise NotImplementedError(
            f"check(): {loss.name!r} is a class-axis loss (classes=True); the extreme-value "
            "scan covers elementwise losses only in this version"
        )
    dtype_names = tuple(dict.fromkeys(_dtype_name(d) for d in dtypes))
    if backends is None:
        backends = BACKENDS if _torch_available() else ("numpy",)
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; valid backends: {', '.join(BACKENDS)}")
    names = (*loss.inputs, *loss.params)
    wrt = tuple(names if wrt is None else wrt)
    for n in wrt:
        if n not in names:
            raise ValueError(
                f"check(): loss {loss.name!r} has no input or param {n!r}; choose from {', '.join(names)}"
            )
    preds = tuple(float(v) for v in (PREDICTIONS if predictions is None else predictions))
    targs = tuple(float(v) for v in (TARGETS if targets is None else targets))
    sets = _param_sets(loss, params)
    quantities = ("value", *(f"d/d{n}" for n in wrt))
    report = CheckReport(
        loss=loss.name,
        device=str(device),
        dtypes=dtype_names,
        backends=tuple(backends),
        predictions=preds,
        targets=targs,
        param_sets=sets,
        quantities=quantities,
    )
    grid_p, grid_y = (a.ravel() for a in np.meshgrid(preds, targs, indexing="ij"))
    symbols = tuple(loss.symbols[n] for n in names)
    value_fn = mp_function(loss.stable_expr, symbols)  # the true values: see true_value()
    index = {f"d/d{n}": names.index(n) for n in wrt}
    truths: dict[tuple[str, tuple[float, ...]], TrueValue] = {}

    def truth(quantity: str, point: tuple[float, ...]) -> TrueValue:
        key = (quantity, point)
        hit = truths.get(key)
        if hit is None:
            if quantity == "value":
                hit = true_value(value_fn, point)
            else:
                hit = true_derivative(value_fn, point, index[quantity])
            truths[key] = hit
        return hit

    for dtype in dtype_names:
        limit = _MAX[dtype]
        p = _round(grid_p, dtype)
        y = _round(grid_y, dtype)
        keep = np.isfinite(p) & np.isfinite(y)  # e.g. 1e30 is not a float16
        p, y = p[keep], y[keep]
        for pset in sets:
            pr = {k: float(_round(np.array([v]), dtype)[0]) for k, v in pset.items()}
            if not all(math.isfinite(v) for v in pr.values()):
                continue
            for backend in backends:
                if (backend == "numpy" and dtype not in _NUMPY_DTYPES) or (
                    backend == "torch/full" and not wrt
                ):
                    continue
                try:
                    results = _run(backend, loss, p, y, pr, dtype, wrt, device)
                except Exception as exc:  # a backend failing on a whole grid is a finding
                    report.problems.append(
                        Problem(
                            dtype,
                            backend,
                            math.nan,
                            math.nan,
                            dict(pr),
                            "call",
                            math.nan,
                            math.nan,
                            f"raised {type(exc).__name__}: {exc}",
                        )
                    )
                    continue
                for quantity, out in results.items():
                    report.evaluated += out.size
                    for i in np.flatnonzero(~np.isfinite(out)):
                        point = (float(p[i]), float(y[i]), *(pr[k] for k in loss.params))
                        got = float(out[i])
                        tv = truth(quantity, point)
                        what = _judge(quantity, got, tv, dtype, limit)
                        if what is None:
                            if tv.kind == "undefined" or (tv.kind == "inf" and tv.limit):
                                report.skipped += 1
                            continue
                        report.problems.append(
                            Problem(
                                dtype,
                                backend,
                                point[0],
                                point[1],
                                dict(pr),
                                quantity,
                                got,
                                tv.value,
                                what,
                            )
                        )
    return report


def _judge(quantity: str, got: float, tv: TrueValue, dtype: str, limit: float) -> str | None:
    """The problem sentence for a non-finite output ``got``, or None if it is right."""
    if tv.kind == "undefined":
        return None
    if tv.kind == "inf" and tv.limit:
        # undefined at the point and infinite nearby (0 * log 0 next to log 0, inf - inf):
        # nan and inf are equally right there
        return None
    shown = "nan" if math.isnan(got) else ("inf" if got > 0 else "-inf")
    label = "limit" if tv.limit else "true value"
    if tv.kind == "finite" and abs(tv.value) <= limit:
        return f"{quantity} is {shown}; {label} {_fmt(tv.value)}"
    # the true value is infinite or beyond the dtype: only nan or a wrong sign is wrong
    if tv.kind == "inf":
        beyond = _fmt(tv.value)
    elif math.isinf(tv.value):
        beyond = f"{'< -' if tv.value < 0 else '> '}{_fmt(_MAX['float64'])} (beyond float64)"
    else:
        beyond = f"{_fmt(tv.value)} (beyond {dtype})"
    if math.isnan(got) or (got > 0) != (tv.value > 0):
        return f"{quantity} is {shown}; {label} {beyond}"
    return None


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`check`.

    ``customloss.check`` names both this module and the function (``cl.check(loss)``).
    Importing a submodule sets the package attribute to the module, whatever
    ``customloss/__init__.py`` bound before, so the module itself must be callable for
    ``cl.check(loss)`` to work in every import order.
    """

    def __call__(self, loss: Loss, **kwargs: Any) -> CheckReport:
        return check(loss, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
