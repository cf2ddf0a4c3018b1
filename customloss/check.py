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
  that lies in the param's declared domain (one at a time, the others at their
  defaults);
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy

from customloss import _validate

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = [
    "CLASS_LOGITS",
    "CLASS_PROBABILITIES",
    "CLASS_TARGETS",
    "DTYPES",
    "PARAM_VALUES",
    "PREDICTIONS",
    "TARGETS",
    "CheckReport",
    "Problem",
    "TrueValue",
    "check",
    "class_components",
    "class_layout",
    "class_point",
    "class_targets",
    "expand_classes",
    "mp_class_function",
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
#: Class-axis losses: logit rows (C = 3) -- all equal, one class dominant at +-1e4, the
#: others at +-1e4 or 0, float32's exp overflow (100), moderate logits.
CLASS_LOGITS: tuple[tuple[float, ...], ...] = (
    (0.0, 0.0, 0.0),
    (1e4, 1e4, 1e4),
    (-1e4, -1e4, -1e4),
    (1e4, 0.0, 0.0),
    (-1e4, 0.0, 0.0),
    (1e4, -1e4, -1e4),
    (-1e4, 1e4, 1e4),
    (1e4, -1e4, 0.0),
    (100.0, 0.0, -100.0),
    (5.0, 0.0, -5.0),
)
#: Class-axis losses: probability rows (C = 3), with exact zeros and ones.
CLASS_PROBABILITIES: tuple[tuple[float, ...], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 0.5, 0.5),
    (1 / 3, 1 / 3, 1 / 3),
    (1.0 - 1e-6, 1e-6, 0.0),
    (0.0, 0.0, 0.0),
)
#: Class-axis losses: targets -- class indices (an ``int``; the loss's ``ignore_index`` is
#: added) and probability rows (one-hot, uniform, with zeros).
CLASS_TARGETS: tuple[int | tuple[float, ...], ...] = (
    0,
    1,
    2,
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1 / 3, 1 / 3, 1 / 3),
    (0.5, 0.5, 0.0),
    (0.0, 0.9, 0.1),
)
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
            ``nan`` for a problem that concerns the whole grid (an exception).  For a
            class-axis loss the row of per-class logits (or probabilities).
        target: the target, as evaluated.  For a class-axis loss a class index
            (``int``; one outside ``[0, C)`` is the ignore index) or a probability row.
        params: the param values used at this point (per-class params: every class).
        quantity: ``"value"`` or ``"d/d<name>"``; for a per-class input or param of a
            class-axis loss ``"d/d<name>[c]"``, the derivative in its entry at class c.
        got: what the backend returned.
        expected: the true value (or limit) rounded to float64; ``inf`` where it is
            infinite or beyond float64; ``nan`` for an exception.
        what: a sentence describing the problem.
    """

    dtype: str
    backend: str
    input: float | tuple[float, ...]
    target: float | tuple[float, ...]
    params: dict[str, float]
    quantity: str
    got: float
    expected: float
    what: str

    @classmethod
    def call_failed(cls, dtype: str, backend: str, params: dict[str, float], what: str) -> Problem:
        """A backend that raised on a whole grid (a finding, not a crash of the scan)."""
        nan = math.nan
        return cls(dtype, backend, nan, nan, dict(params), "call", nan, nan, what)

    def where(self) -> str:
        """The point: input, target and params."""
        if isinstance(self.input, tuple):
            at = f"input={_fmt_row(self.input)} target={_fmt_target(self.target, len(self.input))}"
        elif math.isnan(self.input):
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
        predictions: the prediction grid (before rounding to each dtype); for a
            class-axis loss, rows of per-class logits or probabilities.
        targets: the target grid; for a class-axis loss, class indices and
            probability rows.
        param_sets: the param combinations scanned.
        quantities: ``"value"`` and the ``"d/d<name>"`` derivatives scanned.
        classes: the number of classes C of a class-axis loss (0: elementwise).
        stopped: judging stopped at ``max_problems`` (there may be more problems).
    """

    loss: str
    device: str = "cpu"
    problems: list[Problem] = field(default_factory=list)
    evaluated: int = 0
    skipped: int = 0
    dtypes: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    predictions: tuple[Any, ...] = ()
    targets: tuple[Any, ...] = ()
    param_sets: list[dict[str, float]] = field(default_factory=list)
    quantities: tuple[str, ...] = ()
    classes: int = 0
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """One line: the verdict and what was scanned."""
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        if self.stopped:
            verdict += " (stopped at max_problems; there may be more)"
        rows = f"rows of C={self.classes} logits/probabilities " if self.classes else ""
        return (
            f"check({self.loss!r}): {verdict} in {self.evaluated:,} results "
            f"[{', '.join(self.quantities)}] over {len(self.predictions)} predictions {rows}x "
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
    from customloss.calculus import _real_log

    mp = _mp()

    def softplus(u: Any) -> Any:
        return u + mp.log1p(mp.exp(-u)) if u > 0 else mp.log1p(mp.exp(u))

    def logsumexp(*args: Any) -> Any:
        m = max(args)
        return m + mp.log(mp.fsum(mp.exp(a - m) for a in args))

    return {
        "KeptExp": mp.exp,
        "KeptLog": _real_log,
        "LogMix": lambda *a: _real_log(
            mp.fsum(c / (1 + mp.exp(-v)) for c, v in zip(a[::2], a[1::2], strict=True))
        ),
        "LogMixPair": lambda c1, c2, u: _real_log(c1 / (1 + mp.exp(-u)) + c2 / (1 + mp.exp(u))),
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
        domain = loss.domains.get(name)
        if default is None:  # required: scan the candidates, start from 1 (or the first
            # value inside the declared domain; none inside: the domain's own words)
            inside = [
                v
                for v in (*values.get(name, ()), 1.0, *PARAM_VALUES)
                if domain is None or _validate.in_domain(float(v), domain)
            ]
            if not inside:
                raise ValueError(
                    f"check(): no value to try for the required param {name!r} "
                    f"({_validate.describe_domain(domain)}); give some with "
                    f"params={{{name!r}: [...]}}"
                )
            start = float(inside[0])
        elif isinstance(default, tuple):  # a per-class vector: scan its entries as scalars
            start, extra = default[0], list(default[1:])
        else:
            start = float(default)
        base[name] = start
        if name in values:
            chosen = [float(v) for v in values[name]]
            if domain is not None:  # asked for explicitly: refused, naming the value
                _validate.check_domain(f"check(): values of param {name!r}", chosen, domain)
        else:  # the generic grid, within the param's declared domain
            chosen = [v for v in PARAM_VALUES if domain is None or _validate.in_domain(v, domain)]
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


def _fmt_row(row: Sequence[float]) -> str:
    return "(" + ", ".join(_fmt(v) for v in row) + ")"


def _fmt_target(target: Any, n_classes: int) -> str:
    if isinstance(target, tuple):
        return _fmt_row(target)
    if isinstance(target, int):
        return f"class {target}" if 0 <= target < n_classes else f"ignore_index {target}"
    return _fmt(target)


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


def _torch_results(
    loss: Loss, x: Any, t: Any, ps: dict[str, Any], grads: Sequence[str], full: bool
) -> _Results:
    """Unreduced value (unless ``full``) and the gradients of the names in ``grads``."""
    v = loss(x, t, reduction="none", **ps)
    out = {} if full else {"value": v.detach().double().cpu().numpy()}
    if grads:
        v.backward(v.new_ones(v.shape))
    tensors = {loss.inputs[0]: x, loss.inputs[1]: t, **ps}
    for n in grads:
        g = tensors[n].grad
        if g is None:
            raise RuntimeError(f"no gradient reached {n!r}")
        out[f"d/d{n}"] = g.double().cpu().numpy()
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
    return _torch_results(loss, x, t, ps, grads, full)


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
    dtypes: Sequence[Any] | None = None,
    backends: Sequence[str] | None = None,
    wrt: Sequence[str] | None = None,
    device: str = "cpu",
    max_problems: int | None = None,
) -> CheckReport:
    """Scan ``loss`` for ``inf``/``nan`` values and gradients at extreme inputs.

    Args:
        loss: the :class:`~customloss.loss.Loss` to scan.
        predictions: prediction grid; default :data:`PREDICTIONS`.
        targets: target grid, crossed with the predictions; default :data:`TARGETS`.
        params: values to try for each param (one param at a time, the others at their
            defaults); default :data:`PARAM_VALUES` for every param.
        dtypes: dtypes to scan (names, NumPy or torch dtypes); default :data:`DTYPES`
            (without bfloat16 when torch is not installed: rounding to it needs torch).
            The NumPy backend scans the ones NumPy has (not bfloat16).
        backends: any of ``"numpy"``, ``"torch"``, ``"torch/full"``; default all (the
            torch ones only when torch is installed).
        wrt: names whose derivatives are scanned; default the prediction, the target and
            every param.
        device: the torch device the torch backends run on (``"cuda"``, ...).
        max_problems: stop judging once this many problems are found (the rest of the
            grid is still evaluated, but no true values are computed for it);
            ``report.stopped`` says so.  None: no limit.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is true when nothing was found.

    References:
        The policy (which points count as problems) is described in the module docstring
        and in ``docs/reliability.md``.
    """
    from customloss.loss import Loss

    if not isinstance(loss, Loss):
        raise TypeError(f"check() needs a customloss Loss, got {type(loss).__name__}")
    has_torch = _torch_available()
    if dtypes is None:
        dtypes = DTYPES if has_torch else tuple(d for d in DTYPES if d != "bfloat16")
    dtype_names = tuple(dict.fromkeys(_dtype_name(d) for d in dtypes))
    if "bfloat16" in dtype_names and not has_torch:
        raise ValueError("check(): scanning bfloat16 needs torch, which is not installed")
    if backends is None:
        backends = BACKENDS if has_torch else ("numpy",)
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
    if loss.classes:
        return _check_classes(
            loss,
            predictions,
            targets,
            params,
            dtype_names,
            tuple(backends),
            wrt,
            device,
            max_problems,
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
        for pr, backend in _scan_runs(sets, backends, dtype, bool(wrt)):
            try:
                results = _run(backend, loss, p, y, pr, dtype, wrt, device)
            except Exception as exc:  # a backend failing on a whole grid is a finding
                report.problems.append(
                    Problem.call_failed(dtype, backend, pr, f"raised {type(exc).__name__}: {exc}")
                )
                continue
            for quantity, out in results.items():
                report.evaluated += out.size
                for i in np.flatnonzero(~np.isfinite(out)):
                    if max_problems is not None and len(report.problems) >= max_problems:
                        report.stopped = True
                        break
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


def _scan_runs(
    sets: Sequence[Mapping[str, float]], backends: Sequence[str], dtype: str, any_wrt: bool
) -> Iterator[tuple[dict[str, float], str]]:
    """The (params rounded to ``dtype``, backend) runs of one dtype's scan: param sets
    that stay finite in the dtype, backends that can run it (NumPy has no bfloat16;
    ``torch/full`` needs something to differentiate)."""
    for pset in sets:
        pr = {k: float(_round(np.array([v]), dtype)[0]) for k, v in pset.items()}
        if not all(math.isfinite(v) for v in pr.values()):
            continue
        for backend in backends:
            if (backend == "numpy" and dtype not in _NUMPY_DTYPES) or (
                backend == "torch/full" and not any_wrt
            ):
                continue
            yield pr, backend


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


# ---------------------------------------------------------------------------
# class-axis losses: the class reductions written out over explicit classes
# ---------------------------------------------------------------------------
def class_components(symbol: sympy.Symbol, n_classes: int) -> tuple[sympy.Symbol, ...]:
    """The entries ``s[0], ..., s[C-1]`` of a per-class symbol ``s`` (real symbols)."""
    return tuple(sympy.Symbol(f"{symbol.name}[{c}]", real=True) for c in range(n_classes))


@functools.lru_cache(maxsize=256)
def expand_classes(
    expr: sympy.Expr,
    per_class: tuple[sympy.Symbol, ...],
    n_classes: int,
    at: int | None = None,
) -> sympy.Expr:
    """``expr`` with every class reduction written out over ``n_classes`` classes.

    ``csum(u)`` becomes ``u[0] + ... + u[C-1]``, ``cmax(u)`` ``Max(u[0], ...)`` and
    ``clogsumexp(u)`` ``log(exp(u[0]) + ...)``, where ``u[c]`` is ``u`` with every
    per-class symbol replaced by its entry at class ``c`` (:func:`class_components`);
    inner reductions are written out first.  This is the mathematics of the loss with
    nothing of the code generator in it: no stability rewrite, no gathering of
    class-index targets.

    Args:
        expr: a class-axis expression (``Loss.expr``, ``Loss.grad()``, ...).
        per_class: the per-class symbols.
        n_classes: the number of classes C.
        at: per-class symbols left outside every reduction (a per-class derivative
            from ``Loss.grad``, which means "at class j") become their entry at this
            class; None: there must be none.

    Returns:
        A SymPy expression in the entries and the per-sample symbols.

    Raises:
        ValueError: a per-class symbol outside every reduction and ``at`` is None, or
            a class reduction this function does not know.
    """
    from customloss.calculus import CLASS_REDUCTIONS, CLogSumExp, CMax, CSum

    comps = {s: class_components(s, n_classes) for s in per_class}

    def visit(e: sympy.Basic) -> sympy.Basic:
        if e.is_Atom:
            return e
        args = tuple(visit(a) for a in e.args)
        if isinstance(e, CLASS_REDUCTIONS):
            (u,) = args
            terms = [u.xreplace({s: comps[s][c] for s in per_class}) for c in range(n_classes)]
            if isinstance(e, CSum):
                return sympy.Add(*terms)
            if isinstance(e, CMax):
                return sympy.Max(*terms)
            if isinstance(e, CLogSumExp):
                return sympy.log(sympy.Add(*(sympy.exp(t) for t in terms)))
            raise ValueError(f"expand_classes(): unknown class reduction {type(e).__name__}")
        return e.func(*args) if args != e.args else e

    out = visit(expr)
    left = out.free_symbols & set(per_class)
    if left and at is None:
        raise ValueError(
            f"expand_classes(): {sorted(s.name for s in left)[0]!r} is per-class but used "
            "outside a class reduction; pass at= (the class it stands for)"
        )
    if left:
        out = out.xreplace({s: comps[s][at] for s in left})
    return out


def class_layout(loss: Loss, n_classes: int) -> tuple[tuple[sympy.Symbol, ...], dict[str, int]]:
    """The arguments of :func:`mp_class_function` and where each name starts.

    Order: the prediction's C entries, the target's C entries, then each param in
    ``loss.params`` order (C entries when per-class, one otherwise).

    Returns:
        ``(symbols, offsets)``: the argument symbols and name -> index of its first one.
    """
    args: list[sympy.Symbol] = []
    offsets: dict[str, int] = {}
    for n in (*loss.inputs, *loss.params):
        offsets[n] = len(args)
        s = loss.symbols[n]
        args.extend(class_components(s, n_classes) if n in loss.per_class else (s,))
    return tuple(args), offsets


def mp_class_function(
    loss: Loss, n_classes: int, expr: sympy.Expr | None = None, at: int | None = None
) -> Callable[..., Any]:
    """A class-axis loss (or ``expr``) as a function of mpmath numbers, one per entry.

    The class reductions are written out over ``n_classes`` classes
    (:func:`expand_classes`), so the function is independent of the stability rewrites
    and the code generator.  Arguments as in :func:`class_layout`.

    Args:
        loss: a ``classes=True`` loss.
        n_classes: the number of classes C.
        expr: the expression to evaluate; default the plain ``loss.expr``.
        at: see :func:`expand_classes` (for per-class derivatives).
    """
    per_class = tuple(loss.symbols[n] for n in loss.per_class)
    args, _ = class_layout(loss, n_classes)
    full = expand_classes(loss.expr if expr is None else expr, per_class, n_classes, at)
    return mp_function(full, args)


def class_point(
    loss: Loss, row: Sequence[float], target_row: Sequence[float], params: Mapping[str, float]
) -> tuple[float, ...]:
    """The flat argument tuple of :func:`mp_class_function` at one sample.

    Per-class params given as a scalar take that value at every class; a per-class
    param may also be given as a sequence of C values.
    """
    n_classes = len(row)
    vals = [float(v) for v in (*row, *target_row)]
    for k in loss.params:
        v = params[k]
        if k in loss.per_class:
            vals.extend(float(e) for e in (v if isinstance(v, (tuple, list)) else [v] * n_classes))
        else:
            vals.append(float(v))
    return tuple(vals)


def class_targets(n_classes: int) -> tuple[int | tuple[float, ...], ...]:
    """The default targets of the class-axis scan for C classes (see :data:`CLASS_TARGETS`).

    Each class index, each one-hot row, the uniform row, ``(0.5, 0.5, 0, ...)`` and
    ``(0, 0.9, 0.1, 0, ...)`` (soft targets with exact zeros).
    """
    eye = [tuple(float(i == c) for i in range(n_classes)) for c in range(n_classes)]
    rest = [0.0] * (n_classes - 2)
    return (
        *range(n_classes),
        *eye,
        tuple([1 / n_classes] * n_classes),
        (0.5, 0.5, *rest),
        (0.0, 0.9, 0.1, *rest[1:]) if n_classes > 2 else (0.1, 0.9),
    )


def _class_grid(
    loss: Loss, predictions: Sequence[Any] | None, targets: Sequence[Any] | None
) -> tuple[tuple[tuple[float, ...], ...], tuple[int | tuple[float, ...], ...], int]:
    """Validated prediction rows, targets (with the ignore index) and C."""
    ignore = int(loss.options.get("ignore_index", -100))
    if predictions is None:
        probability = loss.domains.get(loss.inputs[0]) == "probability"
        rows = CLASS_PROBABILITIES if probability else CLASS_LOGITS + CLASS_PROBABILITIES
    else:
        try:
            rows = tuple(tuple(float(v) for v in r) for r in predictions)
        except TypeError:
            raise ValueError(
                f"check(): {loss.name!r} is a class-axis loss: predictions must be rows of "
                f"C values (one per class), e.g. [(1e4, 0, -1e4)]; got {list(predictions)!r}"
            ) from None
    sizes = sorted({len(r) for r in rows})
    if not rows or len(sizes) != 1 or sizes[0] < 2:
        raise ValueError(
            f"check(): {loss.name!r} is a class-axis loss: predictions must be rows of one "
            f"length C >= 2 (one value per class); got row lengths {sizes}"
        )
    n_classes = sizes[0]
    if targets is None:
        targs: list[int | tuple[float, ...]] = [*class_targets(n_classes), ignore]
    else:
        targs = []
        for t in targets:
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                t = int(t)
                if not (0 <= t < n_classes or t == ignore):
                    raise ValueError(
                        f"check(): class index {t} outside [0, {n_classes}) and not the "
                        f"ignore_index {ignore} of {loss.name!r}"
                    )
                targs.append(t)
                continue
            try:
                row = tuple(float(v) for v in t)
            except TypeError:
                raise ValueError(
                    f"check(): {loss.name!r} is a class-axis loss: a target is a class index "
                    f"(int) or a probability row of C={n_classes} values; got {t!r}"
                ) from None
            if len(row) != n_classes:
                raise ValueError(
                    f"check(): probability target {t!r} has {len(row)} values; the "
                    f"predictions have C={n_classes}"
                )
            targs.append(row)
    return rows, tuple(targs), n_classes


def _class_true_value(
    fn: Callable[..., Any], point: tuple[float, ...], n_classes: int, index: bool
) -> TrueValue:
    """:func:`true_value` for one sample of a class-axis loss.

    Where the loss is undefined at the point, the limit is sought by moving each entry
    of the prediction (and of a probability target) alone, then the whole prediction
    row, the whole target row and both together (every entry by the same relative
    offset, each row with one sign): 4C + 8 directions at most, not all 2^(2C) sign
    combinations.
    """
    mp = _mp()
    v = _adaptive(fn, point)
    if not mp.isnan(v):
        return TrueValue("inf" if mp.isinf(v) else "finite", float(v), False)
    n = len(point)
    pred = range(n_classes)
    targ = range(0) if index else range(n_classes, 2 * n_classes)

    def along(signs: dict[int, int]) -> tuple[int, ...]:
        return tuple(signs.get(i, 0) for i in range(n))

    stages = [_directions(n, (i,)) for i in (*pred, *targ)]
    stages.append([along(dict.fromkeys(pred, s)) for s in (1, -1)])
    if targ:
        stages.append([along(dict.fromkeys(targ, s)) for s in (1, -1)])
        stages.append(
            [
                along({**dict.fromkeys(pred, a), **dict.fromkeys(targ, b)})
                for a in (1, -1)
                for b in (1, -1)
            ]
        )

    with mp.workdps(50):
        base = [mp.mpf(x) for x in point]
        steps = [mp.mpf("1e-20") * max(1, abs(x)) for x in point]

    def probe(d: tuple[int, ...]) -> bool:  # defined just off the point along d?
        with mp.workdps(50):
            q = [b + s * h if s else b for b, s, h in zip(base, d, steps, strict=True)]
            return not mp.isnan(_mp_eval(fn, q))

    for directions in stages:
        defined = [d for d in directions if probe(d)]
        limits = _limits_along(fn, fn, point, defined) if defined else []
        if not limits:
            continue
        if all(math.isfinite(x) for x in limits):
            return TrueValue("finite", limits[0], True)
        if all(x == limits[0] for x in limits):
            return TrueValue("inf", limits[0], True)
        break
    return TrueValue("undefined", math.nan, False)


def _run_class(
    backend: str,
    loss: Loss,
    x: np.ndarray,
    t: np.ndarray,
    params: dict[str, float],
    dtype: str,
    wrt: Sequence[str],
    device: str,
) -> _Results:
    """Per-sample value ``(N,)`` and input gradients ``(N, C)``; param gradients are
    summed over the batch (``(C,)`` per-class, ``()`` otherwise)."""
    n_classes = x.shape[1]
    index = t.dtype.kind in "iu"
    pred, targ = loss.inputs
    if backend == "numpy":
        xs = x.astype(dtype)
        ts = t if index else t.astype(dtype)
        nps = {
            k: np.full(n_classes, v, dtype=dtype) if k in loss.per_class else np.asarray(v, dtype)
            for k, v in params.items()
        }
        out = {"value": np.asarray(loss(xs, ts, reduction="none", **nps), dtype=np.float64)}
        for n in wrt:
            g = loss.gradient(xs, ts, wrt=n, reduction="none", **nps)
            out[f"d/d{n}"] = np.asarray(g, dtype=np.float64)
        return out
    import torch

    full = backend == "torch/full"
    grads = tuple(wrt) if full else tuple(n for n in wrt if n == pred)
    tdt = getattr(torch, dtype)
    xt = torch.as_tensor(x, dtype=torch.float64).to(device=device, dtype=tdt)
    xt.requires_grad_(pred in grads)
    if index:
        tt = torch.as_tensor(t, dtype=torch.int64, device=device)
    else:
        tt = torch.as_tensor(t, dtype=torch.float64).to(device=device, dtype=tdt)
        tt.requires_grad_(targ in grads)
    ps: dict[str, Any] = {}
    for k, v in params.items():
        shape = (n_classes,) if k in loss.per_class else ()
        ps[k] = torch.full(shape, v, dtype=tdt, device=device).requires_grad_(k in grads)
    return _torch_results(loss, xt, tt, ps, grads, full)


def _class_results(
    backend: str,
    loss: Loss,
    x: np.ndarray,
    t: np.ndarray,
    params: dict[str, float],
    dtype: str,
    wrt: Sequence[str],
    device: str,
    judged: Callable[[int], bool],
) -> _Results:
    """Every quantity per sample, shaped ``(N, 1)`` or ``(N, C)``.

    Param gradients come summed over the batch; where the sum is finite every term is
    (a sum with an ``inf`` or ``nan`` term is not finite), so only a non-finite sum is
    taken apart, sample by sample (batches of one), at the samples ``judged(i)`` says
    can be judged (elsewhere the loss is undefined: the terms stay ``nan``, skipped).
    """
    n = len(x)
    out = _run_class(backend, loss, x, t, params, dtype, wrt, device)
    apart = []
    for q, v in list(out.items()):
        if q[3:] not in loss.params:
            out[q] = v.reshape(n, -1)
        elif np.isfinite(v).all():
            out[q] = np.zeros((n, v.size))  # every per-sample term is finite
        else:
            out[q] = np.full((n, v.size), np.nan)
            apart.append(q)
    if apart:
        names = tuple(q[3:] for q in apart)
        for i in range(n):
            if judged(i):
                one = _run_class(
                    backend, loss, x[i : i + 1], t[i : i + 1], params, dtype, names, device
                )
                for q in apart:
                    out[q][i] = one[q].reshape(-1)
    return out


def _check_classes(
    loss: Loss,
    predictions: Sequence[Any] | None,
    targets: Sequence[Any] | None,
    params: Mapping[str, Iterable[float]] | None,
    dtype_names: tuple[str, ...],
    backends: Sequence[str],
    wrt: tuple[str, ...],
    device: str,
    max_problems: int | None,
) -> CheckReport:
    """The scan of a class-axis loss (see the module docstring)."""
    rows, targs, n_classes = _class_grid(loss, predictions, targets)
    sets = _param_sets(loss, params)
    pred, targ = loss.inputs
    report = CheckReport(
        loss=loss.name,
        device=str(device),
        dtypes=dtype_names,
        backends=tuple(backends),
        predictions=rows,
        targets=targs,
        param_sets=sets,
        quantities=("value", *(f"d/d{n}" for n in wrt)),
        classes=n_classes,
    )
    fn = mp_class_function(loss, n_classes)  # the true values: the loss written out
    _, offsets = class_layout(loss, n_classes)
    eye = np.eye(n_classes)
    truths: dict[tuple[Any, ...], TrueValue] = {}

    def truth(quantity: str, comp: int, point: tuple[float, ...], index: bool) -> TrueValue:
        key = (quantity, comp, point, index)
        hit = truths.get(key)
        if hit is None:
            if quantity == "value":
                hit = _class_true_value(fn, point, n_classes, index)
            elif truth("value", 0, point, index).kind == "undefined":
                hit = TrueValue("undefined", math.nan, False)  # no value, no derivative
            else:
                hit = true_derivative(fn, point, offsets[quantity[3:]] + comp)
            truths[key] = hit
        return hit

    def ignored_truth(point: tuple[float, ...]) -> TrueValue:
        # an ignored sample contributes 0 (value and gradients) wherever the loss is
        # defined for some target class at its prediction and params; where it is
        # defined for none (params out of the domain), nothing is right or wrong
        for c in range(n_classes):
            at = (*point[:n_classes], *eye[c], *point[2 * n_classes :])
            if truth("value", 0, at, True).kind != "undefined":
                return TrueValue("finite", 0.0, False)
        return TrueValue("undefined", math.nan, False)

    for dtype in dtype_names:
        limit = _MAX[dtype]
        r = _round(np.array(rows, dtype=np.float64), dtype)
        r = r[np.isfinite(r).all(axis=1)]
        for index in (False, True):
            chosen = [tt for tt in targs if isinstance(tt, int) == index]
            if not chosen or not len(r):
                continue
            x = np.repeat(r, len(chosen), axis=0)
            if index:
                t = np.tile(np.array(chosen, dtype=np.int64), len(r))
                valid = (t >= 0) & (t < n_classes)
                t_rows = np.where(valid[:, None], eye[np.clip(t, 0, n_classes - 1)], 0.0)
            else:
                tr = _round(np.array(chosen, dtype=np.float64), dtype)
                t = t_rows = np.tile(tr, (len(r), 1))
                valid = np.ones(len(x), dtype=bool)
            here = tuple(n for n in wrt if not (index and n == targ))  # indices: no d/dy
            for pr, backend in _scan_runs(sets, backends, dtype, bool(here)):

                def judged(
                    i: int,
                    pr: dict[str, float] = pr,
                    x: np.ndarray = x,
                    t_rows: np.ndarray = t_rows,
                    valid: np.ndarray = valid,
                    index: bool = index,
                ) -> bool:  # called at once, in this iteration
                    point = class_point(loss, x[i], t_rows[i], pr)
                    tv = truth("value", 0, point, index) if valid[i] else ignored_truth(point)
                    return tv.kind != "undefined"

                try:
                    results = _class_results(backend, loss, x, t, pr, dtype, here, device, judged)
                except Exception as exc:  # a backend failing on a whole grid is a finding
                    what = f"raised {type(exc).__name__}: {exc}"
                    kind = "class-index" if index else "probability"
                    report.problems.append(
                        Problem.call_failed(dtype, backend, pr, f"{what} ({kind} targets)")
                    )
                    continue
                for quantity, out in results.items():
                    report.evaluated += out.size
                    per_class = quantity != "value" and quantity[3:] in loss.per_class
                    for i, c in zip(*np.nonzero(~np.isfinite(out)), strict=True):
                        if max_problems is not None and len(report.problems) >= max_problems:
                            report.stopped = True
                            break
                        point = class_point(loss, x[i], t_rows[i], pr)
                        if valid[i]:
                            tv = truth(quantity, int(c), point, index)
                        else:
                            tv = ignored_truth(point)
                        label = f"{quantity}[{c}]" if per_class else quantity
                        got = float(out[i, c])
                        what = _judge(label, got, tv, dtype, limit)
                        if what is None:
                            if tv.kind == "undefined" or (tv.kind == "inf" and tv.limit):
                                report.skipped += 1
                            continue
                        report.problems.append(
                            Problem(
                                dtype,
                                backend,
                                tuple(float(v) for v in x[i]),
                                int(t[i]) if index else tuple(float(v) for v in t[i]),
                                dict(pr),
                                label,
                                got,
                                tv.value,
                                what,
                            )
                        )
    return report


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
