"""Pure SymPy calculus: derivatives and the numerical-stability rewrite pass.

Users see plain SymPy (``Loss.expr``, ``Loss.grad()``).  The compilers see the
*stable* form produced by :func:`stabilize`, which replaces overflow-prone patterns by
internal functions whose numerical evaluation never overflows and whose derivatives
are themselves written in stable functions:

=====================================  ====================================
pattern (plain SymPy)                  stable form
=====================================  ====================================
``1/(1 + exp(-u))``                    ``Sigmoid(u)``
``exp(u)/(1 + exp(u))``                ``Sigmoid(u)``
``1 - Sigmoid(u)``                     ``Sigmoid(-u)``
``log(Sigmoid(u))``                    ``-Softplus(-u)``
``log(1 + exp(u))``                    ``Softplus(u)``
``log(exp(a) + exp(b) + ...)``         ``LogSumExp(a, b, ...)``
``log(1 + x)``                         ``log1p(x)``
``exp(u) - 1``                         ``expm1(u)``
``log(cosh(u))``                       ``LogCosh(u)``
``log(exp(u))``                        ``u``
=====================================  ====================================

Derivatives are taken of the stable form (``Softplus' = Sigmoid``,
``Sigmoid' = Sigmoid(u) Sigmoid(-u)``, ...), then powers of one base are merged
(``b**g / b -> b**(g-1)``) so that no ``0/0`` appears where the true value is finite.
The remaining ``0 * inf`` trap, ``b**(g-1)`` at ``b == 0`` multiplied by a vanishing
chain-rule factor, is handled by the printers' safe power (see :mod:`customloss.codegen`).
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy
from sympy.codegen.cfunctions import expm1, log1p

__all__ = [
    "LogCosh",
    "LogSumExp",
    "Sigmoid",
    "Softplus",
    "derivative",
    "stabilize",
    "stable_derivatives",
]


class Sigmoid(sympy.Function):
    """Logistic sigmoid, evaluated without overflow."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        (u,) = self.args
        return Sigmoid(u) * Sigmoid(-u)

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-u))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class Softplus(sympy.Function):
    """``log(1 + exp(u))``, evaluated without overflow."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return Sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(1 + sympy.exp(u))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class LogSumExp(sympy.Function):
    """``log(sum_i exp(a_i))`` over its arguments, evaluated with the max-shift."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.exp(self.args[argindex - 1] - self)

    def _eval_rewrite_as_exp(self, *args: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(sympy.Add(*(sympy.exp(a) for a in args)))

    def _eval_is_real(self) -> bool | None:
        return all(a.is_real for a in self.args) or None


class LogCosh(sympy.Function):
    """``log(cosh(u)) = |u| + softplus(-2|u|) - log 2``, stable for large ``|u|``."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.tanh(self.args[0])

    def _eval_rewrite_as_cosh(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(sympy.cosh(u))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


#: Internal functions the printers must know (beyond SymPy's own).
STABLE_FUNCTIONS = (Sigmoid, Softplus, LogSumExp, LogCosh, log1p, expm1)


def _is_one(e: sympy.Expr) -> bool:
    return e == sympy.S.One


def _neg_term_of(term: sympy.Expr, func: type) -> sympy.Expr | None:
    """If ``term`` is ``-func(u)`` return ``func(u)``."""
    if term.is_Mul and len(term.args) == 2 and term.args[0] == sympy.S.NegativeOne:
        inner = term.args[1]
        if isinstance(inner, func):
            return inner
    return None


def _rule_pow(e: sympy.Pow) -> sympy.Expr:
    base, ex = e.args
    # (1 + exp(u))**(-k) -> Sigmoid(-u)**k
    if base.is_Add and len(base.args) == 2 and ex.is_negative:
        one, other = _split_one(base)
        if one and isinstance(other, sympy.exp):
            return Sigmoid(-other.args[0]) ** (-ex)
    return e


def _split_one(add: sympy.Add) -> tuple[bool, sympy.Expr | None]:
    """For ``1 + x`` return ``(True, x)``; otherwise ``(False, None)``."""
    a, b = add.args
    if _is_one(a):
        return True, b
    if _is_one(b):
        return True, a
    return False, None


def _rule_mul(e: sympy.Mul) -> sympy.Expr:
    # exp(u) * Sigmoid(-u) -> Sigmoid(u)
    factors = list(e.args)
    for i, f in enumerate(factors):
        if isinstance(f, sympy.exp):
            u = f.args[0]
            for j, g in enumerate(factors):
                if isinstance(g, Sigmoid) and g.args[0] == -u:
                    rest = [h for k, h in enumerate(factors) if k not in (i, j)]
                    return sympy.Mul(Sigmoid(u), *rest)
    return e


def _rule_add(e: sympy.Add) -> sympy.Expr:
    terms = list(e.args)
    const = [t for t in terms if t.is_Number]
    # 1 - Sigmoid(u) -> Sigmoid(-u)
    if const and _is_one(const[0]):
        for t in terms:
            s = _neg_term_of(t, Sigmoid)
            if s is not None:
                rest = [x for x in terms if x is not t and x is not const[0]]
                return sympy.Add(Sigmoid(-s.args[0]), *rest)
    # 1 - sum_k c_k Sigmoid(v_k) with sum_k c_k == 1  ->  sum_k c_k Sigmoid(-v_k)
    # (e.g. 1 - p_t with p_t = y p + (1-y)(1-p): no cancellation at p_t -> 1)
    if const and _is_one(const[0]):
        sig_terms, coeffs, rest = [], [], []
        for t in terms:
            if t is const[0]:
                continue
            sig = [f for f in sympy.Mul.make_args(t) if isinstance(f, Sigmoid)]
            if len(sig) == 1:
                sig_terms.append(sig[0])
                coeffs.append(-t / sig[0])
            else:
                rest.append(t)
        if len(sig_terms) >= 2 and sympy.expand(sympy.Add(*coeffs)) == 1:
            flipped = [c * Sigmoid(-s.args[0]) for c, s in zip(coeffs, sig_terms, strict=False)]
            return sympy.Add(*flipped, *rest)
    # exp(u) - 1 -> expm1(u)
    if const and const[0] == sympy.S.NegativeOne:
        for t in terms:
            if isinstance(t, sympy.exp):
                rest = [x for x in terms if x is not t and x is not const[0]]
                return sympy.Add(expm1(t.args[0]), *rest)
    return e


def _rule_log(e: sympy.log) -> sympy.Expr:
    (arg,) = e.args
    if isinstance(arg, Sigmoid):
        return -Softplus(-arg.args[0])
    if arg.is_Pow and isinstance(arg.base, Sigmoid):
        return -arg.exp * Softplus(-arg.base.args[0])
    if isinstance(arg, sympy.exp):
        return arg.args[0]
    if isinstance(arg, sympy.cosh):
        return LogCosh(arg.args[0])
    if arg.is_Add:
        terms = arg.args
        exps: list[sympy.Expr] = []
        for t in terms:
            if isinstance(t, sympy.exp):
                exps.append(t.args[0])
            elif _is_one(t):
                exps.append(sympy.S.Zero)
            else:
                break
        else:
            if len(exps) == 2 and sympy.S.Zero in exps:
                other = exps[1] if exps[0] == 0 else exps[0]
                return Softplus(other)
            return LogSumExp(*exps)
        if len(terms) == 2:
            one, other = _split_one(arg)
            if one:
                return log1p(other)
    return e


_RULES = (
    (sympy.Pow, _rule_pow),
    (sympy.Mul, _rule_mul),
    (sympy.Add, _rule_add),
    (sympy.log, _rule_log),
)


def stabilize(expr: sympy.Expr) -> sympy.Expr:
    """Rewrite ``expr`` into an equal expression whose evaluation does not overflow.

    Applied bottom-up until nothing changes; see the module docstring for the rules.

    Args:
        expr: a plain SymPy expression (as in ``Loss.expr``).

    Returns:
        An equal expression using :class:`Sigmoid`, :class:`Softplus`,
        :class:`LogSumExp`, :class:`LogCosh`, ``log1p`` and ``expm1`` where they apply.
    """
    memo: dict[sympy.Basic, sympy.Basic] = {}

    def visit(e: sympy.Basic) -> sympy.Basic:
        if e.is_Atom:
            return e
        hit = memo.get(e)
        if hit is not None:
            return hit
        args = tuple(visit(a) for a in e.args)
        new = e.func(*args) if args != e.args else e
        for _ in range(8):  # a rule may enable another at the same node
            before = new
            for cls, rule in _RULES:
                if isinstance(new, cls):
                    new = rule(new)
            if new == before:
                break
            if not new.is_Atom:
                new = new.func(*(visit(a) for a in new.args))
        memo[e] = new
        return new

    return visit(expr)


def derivative(expr: sympy.Expr, wrt: sympy.Symbol, order: int = 1) -> sympy.Expr:
    """Plain SymPy derivative (what ``Loss.grad`` shows).

    Args:
        expr: the elementwise loss.
        wrt: the symbol to differentiate with respect to.
        order: how many times to differentiate.
    """
    return sympy.diff(expr, wrt, order)


def _tidy(expr: sympy.Expr) -> sympy.Expr:
    # Merge powers of one base (b**g / b -> b**(g-1)) so no 0/0 remains, then
    # re-stabilise forms the differentiation created (1 - Sigmoid(u), ...).
    return stabilize(sympy.powsimp(expr, deep=True, combine="exp"))


def stable_derivatives(stable_expr: sympy.Expr, wrt: Iterable[sympy.Symbol]) -> list[sympy.Expr]:
    """Derivatives of an already-stabilised expression, themselves stable.

    Args:
        stable_expr: output of :func:`stabilize`.
        wrt: symbols to differentiate with respect to, in order.

    Returns:
        One stable expression per symbol.
    """
    return [_tidy(sympy.diff(stable_expr, s)) for s in wrt]
