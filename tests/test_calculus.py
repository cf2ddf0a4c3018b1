"""Stability rewrites preserve values (checked with mpmath at high precision) and
produce the stable functions; derivatives equal SymPy's and stay finite."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy
from sympy.codegen.cfunctions import expm1, log1p

import customloss as cl
from customloss import dsl
from customloss.calculus import (
    KeptExp,
    LogCosh,
    LogSumExp,
    Sigmoid,
    Softplus,
    derivative,
    stabilize,
    stable_derivatives,
)

x, y, g, a = (dsl.symbol(n) for n in "xyga")

RULES = [
    (cl.sigmoid(x), Sigmoid),
    (sympy.exp(x) / (1 + sympy.exp(x)), Sigmoid),
    (sympy.log(cl.sigmoid(x)), Softplus),
    (sympy.log(1 - cl.sigmoid(x)), Softplus),
    (sympy.log(1 + sympy.exp(x)), Softplus),
    (sympy.log(sympy.exp(x) + sympy.exp(y)), LogSumExp),
    (sympy.log(sympy.exp(x) + sympy.exp(y) + sympy.exp(g)), LogSumExp),
    (sympy.log(1 + x**2), log1p),
    (sympy.exp(x) - 1, expm1),
    (sympy.log(sympy.cosh(x - y)), LogCosh),
]


def _mp(expr):
    """Evaluate a plain SymPy expression with mpmath at 50 digits (the reference)."""
    return sympy.lambdify([x, y, g], expr, modules="mpmath")


@pytest.mark.parametrize(("expr", "cls"), RULES, ids=lambda v: str(v)[:40])
def test_rewrite_introduces_stable_function_and_keeps_value(expr, cls):
    stable = stabilize(expr)
    assert stable.atoms(cls), stable
    back = stable.rewrite(sympy.exp).rewrite(sympy.cosh)
    back = back.replace(lambda e: isinstance(e, log1p), lambda e: sympy.log(1 + e.args[0]))
    back = back.replace(lambda e: isinstance(e, expm1), lambda e: sympy.exp(e.args[0]) - 1)
    ref, new = _mp(expr), _mp(back)
    mpmath.mp.dps = 50
    for xv, yv, gv in [(0.3, -1.2, 2.0), (-4.0, 0.5, 0.1), (7.5, 3.0, -2.0)]:
        assert float(new(xv, yv, gv)) == pytest.approx(float(ref(xv, yv, gv)), rel=1e-12)


def test_complement_of_p_t_becomes_flipped_sigmoids():
    p = cl.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    stable = stabilize(1 - p_t)
    assert sympy.simplify(stable - (y * Sigmoid(-x) + (1 - y) * Sigmoid(x))) == 0


def test_naive_bce_becomes_softplus_form():
    bce = -(y * cl.log(cl.sigmoid(x)) + (1 - y) * cl.log(1 - cl.sigmoid(x)))
    stable = stabilize(bce)
    assert sympy.expand(stable - (y * Softplus(-x) + (1 - y) * Softplus(x))) == 0
    assert not stable.atoms(sympy.exp)


def test_stable_functions_differentiate_stably():
    assert sympy.diff(Softplus(x), x) == Sigmoid(x)
    assert sympy.diff(Sigmoid(x), x) == Sigmoid(x) * Sigmoid(-x)
    assert sympy.diff(LogCosh(x), x) == sympy.tanh(x)
    d = sympy.diff(LogSumExp(x, y), x)
    assert d == sympy.exp(x - LogSumExp(x, y))


def test_derivative_is_plain_sympy_diff():
    e = (1 + (g - 1) * y) * (x - y) ** 2
    assert derivative(e, x) == sympy.diff(e, x)
    assert derivative(e, x, 2) == sympy.diff(e, x, 2)


def test_powers_of_one_base_are_merged():
    # d/dx Max(x - c, 0)**g contains b**g / b -> must become b**(g - 1)
    e = sympy.Max(x - a, 0) ** g
    (d,) = stable_derivatives(stabilize(e), [x])
    pows = [p for p in d.atoms(sympy.Pow) if p.base == sympy.Max(x - a, 0)]
    assert pows and all(p.exp == g - 1 for p in pows), d


def _eval_stable(expr, **vals):
    mpmath.mp.dps = 60
    e = expr.rewrite(sympy.exp).subs({dsl.symbol(k): v for k, v in vals.items()})
    return complex(sympy.N(e, 40))


@pytest.mark.parametrize("xv", [-60, -20, 0.5, 20, 60])
def test_stable_derivative_of_bce_matches_high_precision(xv):
    bce = -(y * cl.log(cl.sigmoid(x)) + (1 - y) * cl.log(1 - cl.sigmoid(x)))
    (d,) = stable_derivatives(stabilize(bce), [x])
    ref = 1 / (1 + mpmath.exp(-mpmath.mpf(xv))) - 0.3  # sigmoid(x) - y
    got = _eval_stable(d, x=xv, y=sympy.Rational(3, 10))
    assert got.real == pytest.approx(float(ref), rel=1e-12)
    assert math.isfinite(got.real)


@pytest.mark.parametrize(
    "make, ref",
    [
        (lambda: Sigmoid(7), lambda: 1 / (1 + math.exp(-7))),
        (lambda: Softplus(2), lambda: math.log1p(math.exp(2))),
        (lambda: LogSumExp(1, 2), lambda: math.log(math.exp(1) + math.exp(2))),
        (lambda: LogCosh(3), lambda: math.log(math.cosh(3))),
        (lambda: KeptExp(sympy.Rational(1, 2)), lambda: math.exp(0.5)),
    ],
)
def test_internal_functions_evaluate_at_numbers(make, ref):
    # constants like Sigmoid(7) must be comparable, or Min/Max refuse them
    value = make()
    assert value.is_comparable
    assert float(value.evalf(30)) == pytest.approx(ref(), rel=1e-14)
    u = dsl.symbol("u")
    assert type(make().func(u).evalf()) is make().func  # symbolic: stays itself


@pytest.mark.parametrize(
    "value, ref",
    [
        (lambda: Softplus(-40), lambda: mpmath.log1p(mpmath.exp(-40))),
        (lambda: Softplus(40), lambda: 40 + mpmath.log1p(mpmath.exp(-40))),
        (
            lambda: LogCosh(sympy.Rational(1, 10**10)),
            lambda: mpmath.log(mpmath.cosh(mpmath.mpf(10) ** -10)),
        ),
        (lambda: LogSumExp(-50, 0), lambda: mpmath.log1p(mpmath.exp(-50))),
        (
            lambda: LogSumExp(3, -1, 2),
            lambda: mpmath.log(mpmath.exp(3) + mpmath.exp(-1) + mpmath.exp(2)),
        ),
        (lambda: Sigmoid(-800), lambda: 1 / (1 + mpmath.exp(800))),
    ],
)
def test_internal_functions_evaluate_to_full_precision(value, ref):
    # the textbook forms lose these to rounding (log(1 + 4e-18)); code generation folds
    # such constants into kernels (review finding: x*softplus(-40) was 2e-7 off)
    with mpmath.workprec(300):
        expected = ref()
    got = value().evalf(30)
    assert abs(mpmath.mpf(str(got)) - expected) <= abs(expected) * mpmath.mpf(10) ** -28


def test_constant_softplus_in_a_kernel_is_exact():
    loss = cl.define("sp_const", "x*softplus(-40) + x*log(cosh(1/10000000000))", inputs=("x", "y"))
    got = float(loss(1.0, 0.0, reduction="none"))
    assert got == pytest.approx(math.log1p(math.exp(-40)) + 5e-21, rel=1e-15)


def test_minimum_of_a_constant_sigmoid_compiles():
    # found by fuzzing define + source: stabilize built Min(Sigmoid(7), ...), which SymPy
    # refused ("The argument 'Sigmoid(7)' is not comparable")
    loss = cl.define(
        "min_const_sigmoid",
        "minimum(sigmoid(7), where(769.5 >= exp(p), 0.0, p))",
        inputs=("p", "y"),
    )
    p = np.array([-3.0, 0.0, 0.5, 6.0, 6.7, 7.0, 50.0])
    ref = np.minimum(1 / (1 + np.exp(-7.0)), np.where(np.exp(p) <= 769.5, 0.0, p))
    got = loss(p, np.zeros_like(p), reduction="none")
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
