"""The DSL functions are plain SymPy with the textbook values."""

from __future__ import annotations

import math

import pytest
import sympy

import customloss as cl
from customloss import dsl

x = dsl.symbol("x")
z = dsl.symbol("z")

CASES = [
    (cl.sigmoid, lambda v: 1 / (1 + math.exp(-v))),
    (cl.softplus, lambda v: math.log1p(math.exp(v))),
    (cl.log_sigmoid, lambda v: -math.log1p(math.exp(-v))),
    (cl.relu, lambda v: max(v, 0.0)),
    (lambda e: cl.log1p(e**2), lambda v: math.log1p(v * v)),
    (cl.exp, math.exp),
    (cl.tanh, math.tanh),
    (cl.cosh, math.cosh),
    (cl.abs, abs),
]


@pytest.mark.parametrize(("fn", "ref"), CASES, ids=lambda c: getattr(c, "__name__", "ref"))
@pytest.mark.parametrize("v", [-3.5, -0.2, 0.0, 0.7, 4.0])
def test_functions_match_closed_forms(fn, ref, v):
    expr = fn(x)
    f = sympy.lambdify([x], expr, "math")
    assert f(v) == pytest.approx(ref(v), rel=1e-12, abs=1e-15)


def test_functions_are_plain_sympy():
    allowed = (
        sympy.exp,
        sympy.log,
        sympy.Abs,
        sympy.Max,
        sympy.Min,
        sympy.Piecewise,
        sympy.tanh,
        sympy.cosh,
    )
    for fn, _ in CASES:
        for f in fn(x).atoms(sympy.Function):
            assert isinstance(f, allowed), (fn, f)


def test_log_sqrt_and_min_max():
    assert cl.log(x) == sympy.log(x)
    assert cl.sqrt(x) == sympy.sqrt(x)
    assert cl.maximum(x, z, 1) == sympy.Max(x, z, 1)
    assert cl.minimum(x, 0) == sympy.Min(x, 0)
    with pytest.raises(ValueError, match="at least two"):
        cl.maximum(x)


def test_where_is_piecewise():
    e = cl.where(x > z, x, z)
    assert isinstance(e, sympy.Piecewise)
    f = sympy.lambdify([x, z], e, "math")
    assert f(3.0, 1.0) == 3.0
    assert f(-3.0, 1.0) == 1.0
    with pytest.raises(TypeError, match="condition"):
        cl.where(x, 1, 2)


def test_symbols_are_real_and_unique_per_name():
    assert dsl.symbol("p") is dsl.symbol("p") or dsl.symbol("p") == dsl.symbol("p")
    assert dsl.symbol("p").is_real
    assert cl.log(cl.exp(x)) == x  # real symbols simplify this


def test_function_table_names_every_dsl_function():
    assert set(dsl.FUNCTIONS) == {
        "log", "exp", "sqrt", "abs", "log1p", "tanh", "cosh", "sigmoid", "softplus",
        "log_sigmoid", "relu", "maximum", "minimum", "where",
        "csum", "logsumexp", "softmax", "log_softmax", "cmax", "num_classes", "xlogy",
    }  # fmt: skip


def _log_args() -> list[sympy.Expr]:
    y, a = dsl.symbol("y"), dsl.symbol("a")
    base = [
        x,
        1 - cl.sigmoid(x),
        1 + sympy.exp(-x),
        y * x + (1 - y) * (1 - x),
        x * y,
        x**2,
        x**a,
        sympy.exp(x),
        sympy.exp(x) * sympy.exp(y),
        sympy.E ** (x * y),
        x * sympy.I,
        2 * sympy.I * x,
        x - x,
        x * (x - 1) - x**2 + x,
        sympy.Integer(1),
        sympy.Rational(1, 3),
        sympy.Float(2.5),
        sympy.pi,
        sympy.S.Zero,
        sympy.oo,
        -x,
        -(x**2) - 1,
        sympy.Abs(x) + 1,
        sympy.Max(x, y),
        (1 + x) ** -1,
        sympy.sqrt(x**2 + 1),
        3 * sympy.exp(x),
        # numbers log.eval does rewrite (branch of a negative or imaginary number)
        -2 * sympy.pi,
        -sympy.sqrt(2),
        1 + sympy.I,
        3 * sympy.I,
        sympy.I * x * 0 + sympy.I,
    ]
    return base


@pytest.mark.parametrize("arg", _log_args(), ids=str)
def test_log_is_sympy_log(arg):
    # dsl.log skips log.eval where it cannot rewrite; the result must be SymPy's
    assert dsl.log(arg) == sympy.log(arg)
    assert type(dsl.log(arg)) is type(sympy.log(arg))
