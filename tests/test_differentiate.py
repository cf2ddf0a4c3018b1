"""``differentiate.diff`` equals ``sympy.diff`` and ``calculus.merge_powers`` equals
``sympy.powsimp(deep=True, combine="exp")``, structurally (``==``).

Every check compares with SymPy itself, never with customloss's own output: on every
registered loss, on seeded random expression trees, on edge cases (symbols not in the
expression, non-Symbol variables, bound variables), and numerically for
``merge_powers`` (the merged product has the value of the original).
"""

from __future__ import annotations

import functools
import random

import mpmath
import pytest
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from customloss import dsl, registry
from customloss.calculus import LogCosh, LogSumExp, Sigmoid, Softplus, merge_powers
from customloss.differentiate import diff

X, Y, A, G = (dsl.symbol(n) for n in "xyag")
SYMBOLS = (X, Y, A, G)


def _powsimp(expr: sympy.Expr) -> sympy.Expr:
    return sympy.powsimp(expr, deep=True, combine="exp")


# --------------------------------------------------------------------------- registry
LOSS_NAMES = registry.names()


@functools.cache
def _loss_derivatives(name: str) -> tuple[tuple[str, sympy.Expr, sympy.Symbol, sympy.Expr], ...]:
    """(which expression, expression, symbol, sympy.diff) for every free symbol."""
    loss = registry.get(name)
    exprs = [("expr", loss.expr)]
    if not loss.classes:  # class-axis losses have no elementwise stable form
        exprs.append(("stable_expr", loss.stable_expr))
    return tuple(
        (label, e, s, sympy.diff(e, s))
        for label, e in exprs
        for s in sorted(e.free_symbols, key=str)
    )


def test_registry_is_not_empty():
    assert len(LOSS_NAMES) >= 20


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_registered_loss_diff_equals_sympy_diff(name):
    cases = _loss_derivatives(name)
    assert cases
    for label, e, s, ref in cases:
        assert diff(e, s) == ref, f"{name}.{label}, d/d{s}"


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_registered_loss_merge_powers_equals_powsimp(name):
    for label, _, s, ref in _loss_derivatives(name):
        assert merge_powers(ref) == _powsimp(ref), f"{name}.{label}, d/d{s}"


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_registered_loss_diff_by_foreign_symbol_is_zero(name):
    other = dsl.symbol("not_a_symbol_of_any_loss")
    for _, e, _, _ in _loss_derivatives(name)[:1] + _loss_derivatives(name)[-1:]:
        assert diff(e, other) is sympy.S.Zero
        assert sympy.diff(e, other) is sympy.S.Zero


# --------------------------------------------------------------------------- random trees
N_RANDOM = 200
DEPTH = 3

EXPONENTS = (
    2,
    3,
    -1,
    -2,
    sympy.S.Half,
    -sympy.S.Half,
    sympy.Rational(3, 2),
    sympy.Rational(-1, 3),
    sympy.Float(1.5),
)
CONSTANTS = (1, 2, -1, 3, sympy.S.Half, sympy.Rational(-3, 4), sympy.Float(0.25))
UNARY = (
    sympy.log,
    sympy.exp,
    sympy.sqrt,
    sympy.Abs,
    dsl.tanh,
    dsl.cosh,
    dsl.sigmoid,
    dsl.softplus,
    dsl.log_sigmoid,
    dsl.relu,
    dsl.log1p,
    Sigmoid,
    Softplus,
    LogCosh,
    log1p,
    expm1,
)
# results the generator discards (a complex constant from (-3/4)**(1/2), ...)
NON_REAL = (sympy.I, sympy.zoo, sympy.nan, sympy.oo, -sympy.oo)


def _leaf(rng: random.Random) -> sympy.Expr:
    if rng.random() < 0.8:
        return rng.choice(SYMBOLS)
    return sympy.sympify(rng.choice(CONSTANTS))


def _condition(rng: random.Random) -> sympy.Basic:
    lhs = _leaf(rng) if rng.random() < 0.5 else _leaf(rng) * _leaf(rng) + _leaf(rng)
    op = rng.choice((sympy.Gt, sympy.Lt, sympy.Ge, sympy.Le))
    cond = op(lhs, rng.choice((*SYMBOLS, sympy.S.Zero)))
    if cond in (sympy.true, sympy.false):
        return sympy.Gt(rng.choice(SYMBOLS), 0)
    return cond


def _node(rng: random.Random, depth: int) -> sympy.Expr:
    if depth <= 0 or rng.random() < 0.2:
        return _leaf(rng)
    d = depth - 1
    k = rng.randrange(17)
    if k == 0:
        return _tree(rng, d) + _tree(rng, d)
    if k == 1:
        return _tree(rng, d) * _tree(rng, d)
    if k == 2:
        return _tree(rng, d) / _tree(rng, d)
    if k == 3:
        return _tree(rng, d) ** rng.choice(EXPONENTS)
    if k == 4:
        return _tree(rng, d) ** rng.choice(SYMBOLS)
    if k == 5:
        return _tree(rng, d) ** _tree(rng, d)
    if k in (6, 7, 8):
        return rng.choice(UNARY)(_tree(rng, d))
    if k == 9:
        return rng.choice((sympy.Max, sympy.Min))(_tree(rng, d), _tree(rng, d))
    if k == 10:
        return rng.choice((dsl.maximum, dsl.minimum))(_tree(rng, d), _tree(rng, d))
    if k == 11:
        return dsl.where(_condition(rng), _tree(rng, d), _tree(rng, d))
    if k == 12:  # a Piecewise with no (expr, True) default
        return sympy.Piecewise((_tree(rng, d), _condition(rng)))
    if k == 13:
        return LogSumExp(*(_tree(rng, d) for _ in range(rng.choice((1, 2, 3)))))
    if k == 14:  # a numeric coefficient times three factors (Mul canonicalisation)
        coeff = sympy.sympify(rng.choice(CONSTANTS))
        return sympy.Mul(coeff, *(_tree(rng, d) for _ in range(3)))
    if k == 15:
        return sympy.Add(*(_tree(rng, d) for _ in range(3)))
    return dsl.xlogy(_tree(rng, d), _tree(rng, d))


def _tree(rng: random.Random, depth: int) -> sympy.Expr:
    try:
        e = _node(rng, depth)
    except (ValueError, TypeError, KeyError, NotImplementedError):
        # e.g. Max of a non-real constant, a Piecewise SymPy cannot canonicalise
        return rng.choice(SYMBOLS)
    return rng.choice(SYMBOLS) if e.has(*NON_REAL) else e


@functools.cache
def random_expression(seed: int, depth: int = DEPTH) -> sympy.Expr:
    """The random expression tree of ``seed`` (deterministic): never a lone leaf."""
    rng = random.Random(seed)
    while True:
        e = _tree(rng, depth)
        if not e.is_Atom and e.free_symbols:
            return e


def test_random_expressions_cover_every_node_kind():
    exprs = [random_expression(seed) for seed in range(N_RANDOM)]
    found: set[type] = set()
    symbolic_power = numeric_power = no_default = False
    for e in exprs:
        for node in sympy.preorder_traversal(e):
            found.add(type(node))
            if node.is_Pow:
                symbolic_power |= bool(node.exp.free_symbols)
                numeric_power |= node.exp.is_Number
            if isinstance(node, sympy.Piecewise):
                no_default |= node.args[-1].cond is not sympy.true
    wanted = {
        sympy.Add,
        sympy.Mul,
        sympy.Pow,
        sympy.log,
        sympy.exp,
        sympy.Abs,
        sympy.Max,
        sympy.Min,
        sympy.Piecewise,
        sympy.tanh,
        sympy.cosh,
        Sigmoid,
        Softplus,
        LogSumExp,
        LogCosh,
        log1p,
        expm1,
        sympy.Float,
    }
    assert wanted <= found, wanted - found
    assert symbolic_power and numeric_power and no_default
    assert len(set(exprs)) > 0.9 * N_RANDOM


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_expression_diff_equals_sympy_diff(seed):
    e = random_expression(seed)
    for s in SYMBOLS:
        got = diff(e, s)
        ref = sympy.diff(e, s)
        assert got == ref, f"seed {seed}: d/d{s} of {e}\n  diff:       {got}\n  sympy.diff: {ref}"


# --------------------------------------------------------------------------- edge cases
f = sympy.Function("f")
h = sympy.Function("h", real=True)


@pytest.mark.parametrize(
    "expr",
    [X**2 * A, sympy.exp(X) + Sigmoid(X), LogSumExp(X, A), sympy.Piecewise((X, X > A), (0, True))],
    ids=str,
)
def test_symbol_not_in_expression_gives_zero(expr):
    assert diff(expr, Y) is sympy.S.Zero
    assert sympy.diff(expr, Y) is sympy.S.Zero


def test_constant_gives_zero():
    assert diff(sympy.Integer(3), X) is sympy.S.Zero
    assert diff(X, X) is sympy.S.One
    assert sympy.diff(X, X) is sympy.S.One


@pytest.mark.parametrize(
    ("expr", "wrt"),
    [
        (f(X) ** 2 + X * f(X), f(X)),
        (sympy.exp(f(X)) * X, f(X)),
        (Sigmoid(f(X)) + f(X) * Y, f(X)),
        (X**2, f(X)),
        (f(X) * sympy.Derivative(f(X), X), sympy.Derivative(f(X), X)),
        (sympy.log(f(X) + h(Y)), h(Y)),
    ],
    ids=str,
)
def test_non_symbol_variable_equals_sympy(expr, wrt):
    assert diff(expr, wrt) == sympy.diff(expr, wrt)


@pytest.mark.parametrize("wrt", [X**2, 2 * X, sympy.Integer(1)], ids=str)
def test_non_differentiable_variable_raises_like_sympy(wrt):
    with pytest.raises(ValueError):
        sympy.diff(X**3, wrt)
    with pytest.raises(ValueError):
        diff(X**3, wrt)


@pytest.mark.parametrize(
    "expr",
    [
        sympy.Derivative(X**2 * Y, X),
        X * sympy.Derivative(f(X, Y), X),
        X * sympy.Derivative(f(X, Y), Y),
        sympy.exp(sympy.Derivative(f(X, Y), Y)),
        f(X**2),
        f(X, X * Y) * h(Y),
        sympy.Integral(X * Y, (X, 0, 1)),
        X * sympy.Integral(X * Y, (X, 0, Y)),
        sympy.exp(sympy.Integral(X, (X, 0, 1))),
        sympy.log(X + sympy.Integral(sympy.exp(-A * X**2), (X, 0, sympy.oo))),
        Sigmoid(sympy.Integral(X * A, (A, 0, X))),
        sympy.Sum(X**A, (A, 1, G)),
        sympy.Subs(f(Y) * X, Y, X**2),
    ],
    ids=str,
)
def test_unevaluated_and_bound_variable_expressions_equal_sympy(expr):
    for s in SYMBOLS:
        assert diff(expr, s) == sympy.diff(expr, s), f"d/d{s}"


@pytest.mark.parametrize("outer", [sympy.exp, sympy.log, sympy.tanh, Sigmoid, LogSumExp], ids=str)
def test_function_of_piecewise_without_default_equals_sympy(outer):
    # d/dx Piecewise((a, x > 0)) is Piecewise((0, x > 0)): zero, but not the literal 0,
    # and SymPy's chain rule (Function._eval_derivative) drops the term by `is_zero`.
    expr = outer(sympy.Piecewise((A, X > 0)))
    assert diff(expr, X) == sympy.diff(expr, X)


# --------------------------------------------------------------------------- merge_powers
# Bases positive wherever the symbols are, so powers of them are real and merging
# exponents is value-preserving.
POSITIVE_BASES = (
    X,
    Y,
    X + 1,
    X + Y,
    A * X,
    X * Y,
    sympy.exp(X),
    Sigmoid(X),
    Sigmoid(-X),
    Softplus(Y),
    1 + sympy.exp(-X),
    X**2 + 1,
)
POWER_EXPONENTS = (
    G,
    -G,
    G - 1,
    A,
    X,
    -1,
    2,
    -2,
    G + A,
    Y / 2,
    sympy.S.Half,
    sympy.Rational(3, 2),
    sympy.log(A),
)
N_PRODUCTS = 20


@functools.cache
def random_product(seed: int) -> sympy.Expr:
    """A product of powers of a few positive bases (deterministic in ``seed``)."""
    rng = random.Random(seed)
    factors = [
        rng.choice(POSITIVE_BASES) ** rng.choice(POWER_EXPONENTS) for _ in range(rng.randint(2, 4))
    ]
    # the base itself next to a power of it: b * b**g, b**g / b
    b = rng.choice(POSITIVE_BASES)
    factors.append(b ** rng.choice((1, -1)))
    if rng.random() < 0.4:
        factors.append(sympy.exp(rng.choice(SYMBOLS) * rng.choice(POWER_EXPONENTS)))
    if rng.random() < 0.3:
        factors.append(rng.choice((2, sympy.Rational(1, 3), A)))
    return sympy.Mul(*factors)


@pytest.mark.parametrize("seed", range(N_PRODUCTS))
def test_merge_powers_equals_powsimp_on_derivatives_of_random_products(seed):
    e = random_product(seed)
    for s in SYMBOLS:
        d = sympy.diff(e, s)
        got, ref = merge_powers(d), _powsimp(d)
        assert got == ref, (
            f"seed {seed}: d/d{s} = {d}\n  merge_powers: {got}\n  powsimp:      {ref}"
        )


@pytest.mark.parametrize(
    "expr",
    [
        X**G / X,
        X * X**G,
        (X + 1) ** G * (X + 1) ** A / (X + 1),
        sympy.exp(A) * sympy.exp(G) * X,
        Sigmoid(X) ** G * Sigmoid(X) * Sigmoid(-X),
        sympy.log(X**G / X) + sympy.exp(X) * sympy.exp(-G),
    ],
    ids=str,
)
def test_merge_powers_equals_powsimp_on_same_base_products(expr):
    assert merge_powers(expr) == _powsimp(expr)


def test_merge_powers_of_product_base_next_to_its_factors_equals_powsimp():
    # powsimp merges x*y with sqrt(x*y) into (x*y)**(3/2); a derivative that makes it:
    d = sympy.diff(X**2 * Y * sympy.sqrt(X * Y), X)  # 5*x*y*sqrt(x*y)/2
    assert merge_powers(d) == _powsimp(d)


POINTS = (
    {X: 0.37, Y: 1.9, A: 0.8, G: 2.3},
    {X: 2.6, Y: 0.45, A: 1.7, G: 0.6},
    {X: 1.1, Y: 3.2, A: 0.25, G: 1.4},
)


def _values(expr: sympy.Expr) -> list[mpmath.mpf]:
    # Sigmoid/Softplus have no numeric evaluation of their own: rewrite them with exp
    fn = sympy.lambdify(SYMBOLS, expr.rewrite(sympy.exp), modules="mpmath")
    with mpmath.workdps(30):
        return [mpmath.mpmathify(fn(*(mpmath.mpf(point[s]) for s in SYMBOLS))) for point in POINTS]


def _assert_same_value(original: sympy.Expr, merged: sympy.Expr, what: str) -> None:
    for point, want, got in zip(POINTS, _values(original), _values(merged), strict=True):
        assert isinstance(want, mpmath.mpf) and mpmath.isfinite(want), (what, point, want)
        assert abs(got - want) <= 1e-12 * abs(want), f"{what} at {point}: {got} != {want}"


@pytest.mark.parametrize("seed", range(N_PRODUCTS))
def test_merge_powers_preserves_value(seed):
    e = random_product(seed)
    _assert_same_value(e, merge_powers(e), f"seed {seed}: {e}")
    free = sorted(e.free_symbols, key=str)
    s = free[seed % len(free)]
    d = sympy.diff(e, s)
    _assert_same_value(d, merge_powers(d), f"seed {seed}: d/d{s} = {d}")


# --------------------------------------------------------------------------- review findings


@pytest.mark.parametrize(
    "expr",
    [
        2**X / 2,  # a fraction next to a power of a number
        X * 2 ** (-X) / 2,
        (Y - X) ** G * (X - Y),  # a base next to its negation
        sympy.diff((Y - X) ** G * (X - Y) * X, X),
        sympy.I * (-1) ** Y,  # the imaginary unit next to a power of -1
        sympy.diff((X - Y) ** 2 * 4 ** (X / 2) / 2, X),
    ],
    ids=str,
)
def test_merge_powers_equals_powsimp_beyond_equal_bases(expr):
    assert merge_powers(expr) == _powsimp(expr)


@pytest.mark.parametrize("value", [3, 2.5, sympy.Integer(0)])
def test_plain_numbers_differentiate_to_zero(value):
    assert diff(value, X) == sympy.diff(value, X) == 0


def test_matrix_expressions_keep_their_own_derivative():
    m, n = sympy.MatrixSymbol("M", 2, 2), sympy.MatrixSymbol("N", 2, 2)
    for s in (X, Y):
        got, ref = diff(X * m + n, s), sympy.diff(X * m + n, s)
        assert got == ref and type(got) is type(ref)
