"""The design DSL: symbols and the functions a loss is written with.

Everything here returns *plain* SymPy (``exp``, ``log``, ``Abs``, ``Max``, ``Min``,
``Piecewise``), so that ``Loss.expr`` and ``Loss.grad()`` can be read, printed and
``sympy.lambdify``-ed by anyone.  The numerically stable forms (softplus, log-sigmoid,
logsumexp, ...) are introduced later by :func:`customloss.calculus.stabilize`, only for
the generated code.

The same functions are what a loss *string* may call (see :mod:`customloss.parse`):
:data:`FUNCTIONS` is the single table both the decorator and the parser use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from customloss._lazy import sympy

__all__ = [
    "FUNCTIONS",
    "abs",
    "cmax",
    "cosh",
    "csum",
    "exp",
    "log",
    "log1p",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "num_classes",
    "maximum",
    "minimum",
    "relu",
    "sigmoid",
    "softmax",
    "softplus",
    "sqrt",
    "symbol",
    "tanh",
    "where",
    "xlogy",
]

ExprLike = Any  # a SymPy expression or a Python number


def symbol(name: str) -> sympy.Symbol:
    """The SymPy symbol customloss uses for an input or parameter called ``name``.

    Every symbol is declared real, so ``log(exp(x))`` simplifies to ``x`` and
    ``Abs(x)`` differentiates to ``sign(x)``.  One name always gives the same symbol.
    """
    return sympy.Symbol(name, real=True)


def _sym(x: ExprLike) -> sympy.Expr:
    return sympy.sympify(x, strict=True) if not isinstance(x, sympy.Basic) else x


def log(x: ExprLike) -> sympy.Expr:
    """Natural logarithm (``sympy.log``)."""
    x = _sym(x)
    if _log_stays(x):
        # what sympy.log(x) returns, without the assumption queries of log.eval
        return sympy.log(x, evaluate=False)
    return sympy.log(x)


def _log_stays(x: sympy.Expr) -> bool:
    """Whether ``sympy.log(x)`` is sure to stay the unevaluated ``log(x)``.

    ``log.eval`` only rewrites numbers, ``exp``/``E**u`` arguments, arguments with the
    imaginary unit and arguments it can prove zero. For a sum, product or power of real
    symbols (not ``E**u``) the last question is the only one left, and it is what
    makes defining a loss slow: ``(1 - sigmoid(x)).is_zero`` runs ~10 ms of assumption
    queries (cProfile, docs/performance.md) to answer ``None``. Such an argument is
    never literally zero (SymPy folds ``u - u`` and ``0*u``), so a zero that SymPy
    could prove here would be an identity like ``x*(x-1) - x**2 + x`` written
    unexpanded, which ``log.eval`` does not expand either (``is_zero`` is ``None``).
    """
    if not (x.is_Add or x.is_Mul or x.is_Pow):
        return False
    if x.is_Pow and x.base is sympy.E:
        return False
    return bool(x.free_symbols) and not x.has(sympy.I)


def exp(x: ExprLike) -> sympy.Expr:
    """Exponential."""
    return sympy.exp(_sym(x))


def sqrt(x: ExprLike) -> sympy.Expr:
    """Square root."""
    return sympy.sqrt(_sym(x))


def abs(x: ExprLike) -> sympy.Expr:
    """Absolute value (``sympy.Abs``)."""
    return sympy.Abs(_sym(x))


def log1p(x: ExprLike) -> sympy.Expr:
    """``log(1 + x)``; compiled code uses the accurate ``log1p``."""
    return log(1 + _sym(x))


def tanh(x: ExprLike) -> sympy.Expr:
    """Hyperbolic tangent."""
    return sympy.tanh(_sym(x))


def cosh(x: ExprLike) -> sympy.Expr:
    """Hyperbolic cosine (``log(cosh(x))`` compiles to a stable log-cosh)."""
    return sympy.cosh(_sym(x))


def sigmoid(x: ExprLike) -> sympy.Expr:
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    return 1 / (1 + sympy.exp(-_sym(x)))


def softplus(x: ExprLike) -> sympy.Expr:
    """``log(1 + exp(x))``; compiled code never overflows."""
    return log(1 + sympy.exp(_sym(x)))


def log_sigmoid(x: ExprLike) -> sympy.Expr:
    """``log(sigmoid(x)) = -log(1 + exp(-x))``; compiled as ``-softplus(-x)``."""
    return -log(1 + sympy.exp(-_sym(x)))


def relu(x: ExprLike) -> sympy.Expr:
    """``max(x, 0)``."""
    return sympy.Max(_sym(x), 0)


def maximum(*args: ExprLike) -> sympy.Expr:
    """Elementwise maximum of two or more expressions (``sympy.Max``)."""
    if len(args) < 2:
        raise ValueError("maximum() takes at least two arguments")
    return sympy.Max(*(_sym(a) for a in args))


def minimum(*args: ExprLike) -> sympy.Expr:
    """Elementwise minimum of two or more expressions (``sympy.Min``)."""
    if len(args) < 2:
        raise ValueError("minimum() takes at least two arguments")
    return sympy.Min(*(_sym(a) for a in args))


def where(condition: Any, if_true: ExprLike, if_false: ExprLike) -> sympy.Expr:
    """``if_true`` where ``condition`` holds, else ``if_false`` (a ``sympy.Piecewise``).

    Args:
        condition: a SymPy relational such as ``p > y`` (or a boolean combination).
        if_true: value where the condition holds.
        if_false: value elsewhere.
    """
    ok = isinstance(
        condition,
        (
            sympy.core.relational.Relational,
            sympy.logic.boolalg.BooleanFunction,
            sympy.logic.boolalg.BooleanAtom,
        ),
    )
    if not ok:
        raise TypeError(
            f"where(): condition must be a comparison such as 'p > y', got {condition!r}"
        )
    return sympy.Piecewise((_sym(if_true), condition), (_sym(if_false), True))


def xlogy(x: ExprLike, y: ExprLike) -> sympy.Expr:
    """``x * log(y)``, defined as 0 where ``x == 0`` (so ``0 log 0 = 0``)."""
    x, y = _sym(x), _sym(y)
    return sympy.Piecewise((0, sympy.Eq(x, 0)), (x * log(y), True))


# -- the class axis (losses declared with classes=True) -------------------------


def csum(x: ExprLike) -> sympy.Expr:
    """Sum over the class axis."""
    from customloss.calculus import CSum

    return CSum(_sym(x))


def logsumexp(x: ExprLike) -> sympy.Expr:
    """``log(csum(exp(x)))`` over the class axis (compiled with the max-shift)."""
    return sympy.log(csum(sympy.exp(_sym(x))))


def softmax(x: ExprLike) -> sympy.Expr:
    """``exp(x) / csum(exp(x))`` over the class axis."""
    x = _sym(x)
    return sympy.exp(x) / csum(sympy.exp(x))


def log_softmax(x: ExprLike) -> sympy.Expr:
    """``x - logsumexp(x)`` over the class axis."""
    x = _sym(x)
    return x - logsumexp(x)


def cmax(x: ExprLike) -> sympy.Expr:
    """Maximum over the class axis."""
    from customloss.calculus import CMax

    return CMax(_sym(x))


def num_classes() -> sympy.Expr:
    """The number of classes ``C`` (``csum(1)``)."""
    return csum(sympy.S.One)


#: Name -> function: the DSL vocabulary, shared by the decorator and the string parser.
FUNCTIONS: dict[str, Callable[..., sympy.Expr]] = {
    "log": log,
    "exp": exp,
    "sqrt": sqrt,
    "abs": abs,
    "log1p": log1p,
    "tanh": tanh,
    "cosh": cosh,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "log_sigmoid": log_sigmoid,
    "relu": relu,
    "maximum": maximum,
    "minimum": minimum,
    "where": where,
    "csum": csum,
    "logsumexp": logsumexp,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "cmax": cmax,
    "num_classes": num_classes,
    "xlogy": xlogy,
}
