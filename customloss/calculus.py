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
``log(c1 Sigmoid(u) + c2 Sigmoid(-u))``  ``LogMixPair(c1, c2, u)``
``log(sum_k c_k Sigmoid(v_k))``         ``LogMix(c_1, v_1, ...)`` (``c_k >= 0``)
``log(exp(u))``                        ``u``
=====================================  ====================================

Derivatives are taken of the stable form (``Softplus' = Sigmoid``,
``Sigmoid' = Sigmoid(u) Sigmoid(-u)``, ...), then powers of one base are merged
(``b**g / b -> b**(g-1)``) so that no ``0/0`` appears where the true value is finite.
The remaining ``0 * inf`` trap, ``b**(g-1)`` at ``b == 0`` multiplied by a vanishing
chain-rule factor, is handled by the printers' safe power (see :mod:`customloss.codegen`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mpmath
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from customloss import dsl
from customloss.differentiate import diff as _diff

__all__ = [
    "CLogSumExp",
    "CMax",
    "CSum",
    "NonLinearTargetError",
    "class_derivative",
    "gather_targets",
    "per_class_outside_reductions",
    "simplify_reductions",
    "LogCosh",
    "LogSumExp",
    "Sigmoid",
    "Softplus",
    "derivative",
    "stabilize",
    "stable_derivatives",
]


class _Numeric(sympy.Function):
    """An internal function with a numeric value at numbers (``evalf``).

    Without ``_eval_evalf`` a constant such as ``Sigmoid(7)`` is not *comparable*, and
    ``Min``/``Max`` refuse it (``minimum(sigmoid(7), ...)`` failed to compile; found by
    fuzzing ``define`` + ``source``). The value is computed with mpmath by each class's
    stable formula (:meth:`_mp`) at 20 extra bits, never by the textbook form, which
    loses ``Softplus(-40)`` (``log(1 + 4e-18)``) to rounding; code generation folds such
    constants into the kernel.
    """

    def _mp(self, *args: Any) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _eval_evalf(self, prec: int) -> sympy.Expr | None:
        if not self.args or not all(a.is_number for a in self.args):
            return None  # symbolic: stays itself, like SymPy's own functions
        try:
            with mpmath.workprec(prec + 20):
                args = [a._to_mpmath(prec + 20, allow_ints=False) for a in self.args]
                value = self._mp(*args)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return sympy.Expr._from_mpmath(value, prec)


def _real(*args: Any) -> bool:
    return all(isinstance(a, mpmath.mpf) for a in args)


class Sigmoid(_Numeric):
    """Logistic sigmoid, evaluated without overflow."""

    def _mp(self, u: Any) -> Any:
        return 1 / (1 + mpmath.exp(-u))

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


class Softplus(_Numeric):
    """``log(1 + exp(u))``, evaluated without overflow."""

    def _mp(self, u: Any) -> Any:
        if _real(u) and u > 0:
            return u + mpmath.log1p(mpmath.exp(-u))
        return mpmath.log1p(mpmath.exp(u))

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return Sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(1 + sympy.exp(u))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class LogSumExp(_Numeric):
    """``log(sum_i exp(a_i))`` over its arguments, evaluated with the max-shift."""

    def _mp(self, *args: Any) -> Any:
        if not _real(*args):
            return mpmath.log(mpmath.fsum(mpmath.exp(a) for a in args))
        top = max(range(len(args)), key=lambda i: args[i])
        m = args[top]
        if mpmath.isinf(m):
            return m
        rest = mpmath.fsum(mpmath.exp(a - m) for i, a in enumerate(args) if i != top)
        return m + mpmath.log1p(rest)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.exp(self.args[argindex - 1] - self)

    def _eval_rewrite_as_exp(self, *args: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(sympy.Add(*(sympy.exp(a) for a in args)))

    def _eval_is_real(self) -> bool | None:
        return all(a.is_real for a in self.args) or None


def _real_log(x: Any) -> Any:
    """``log(x)`` as floating point computes it: nan below 0, -inf at 0."""
    if x < 0:
        return mpmath.mpf("nan")
    return mpmath.log(x) if x > 0 else mpmath.mpf("-inf")


def _mixture_weight(v: sympy.Expr, log_m: sympy.Expr) -> sympy.Expr:
    """``Sigmoid(v) Sigmoid(-v) / M`` for ``log_m = log M``, as one exponential: the
    factors apart under- and overflow (``0 * inf``) where the product is finite. Written
    with ``softplus(v) + softplus(-v) = |v| + 2 log1p(e^{-|v|})``, which the runtime's
    p_t form computes too, so a fused kernel shares it."""
    av = sympy.Abs(v)
    return sympy.exp(-av - 2 * log1p(sympy.exp(-av)) - log_m)


class LogMix(_Numeric):
    """``log(sum_k c_k Sigmoid(v_k))`` for ``c_k >= 0``; arguments ``(c_1, v_1, ...)``.

    (The two-term p_t form ``c_1 Sigmoid(u) + c_2 Sigmoid(-u)`` is :class:`LogMixPair`.)
    Evaluated as ``logsumexp_k(log c_k - softplus(-v_k))``: no term underflows, so the
    p_t form of BCE and focal loss (``log(y sigmoid(x) + (1-y)(1-sigmoid(x)))``) is
    finite at any logit. The derivatives are written without ``log c_k``
    (``d/dc_k = sigmoid(v_k)/M``, ``d/dv_k = c_k sigmoid(v_k) sigmoid(-v_k)/M``), so they
    stay finite and differentiable at ``c_k = 0``; the torch runtime's backward uses the
    same formulas (a second derivative through a kernel).
    """

    def _mp(self, *args: Any) -> Any:
        cs, vs = args[::2], args[1::2]
        total = mpmath.fsum(c / (1 + mpmath.exp(-v)) for c, v in zip(cs, vs, strict=True))
        return _real_log(total)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        k = (argindex - 1) // 2
        c, v = self.args[2 * k], self.args[2 * k + 1]
        if argindex % 2:  # d/dc_k = sigmoid(v_k) / M
            return sympy.exp(-Softplus(-v) - self)
        return c * _mixture_weight(v, self)  # d/dv_k

    def _eval_rewrite_as_log(self, *args: sympy.Expr, **kwargs: object) -> sympy.Expr:
        cs, vs = args[::2], args[1::2]
        return sympy.log(sympy.Add(*(c / (1 + sympy.exp(-v)) for c, v in zip(cs, vs, strict=True))))

    def _sympystr(self, printer: Any) -> str:
        cs, vs = self.args[::2], self.args[1::2]
        terms = " + ".join(
            f"{printer.parenthesize(c, 50)}*sigmoid({printer._print(v)})"
            for c, v in zip(cs, vs, strict=True)
        )
        return f"log({terms})"

    def _eval_is_real(self) -> bool | None:
        return all(a.is_real for a in self.args) or None


class LogMixPair(_Numeric):
    """``log(c1 Sigmoid(u) + c2 Sigmoid(-u))``, the p_t form; arguments ``(c1, c2, u)``.

    ``c1 Sigmoid(u) + c2 Sigmoid(-u) = (a + b t) / (1 + t)`` with ``t = e^{-|u|}`` and
    ``a``/``b`` the coefficients of the larger/smaller sigmoid, an identity for any real
    coefficients: the runtimes (``R.log_mix_pt``) evaluate ``log(a + b t) - log1p(t)``
    (``log(b) - |u|`` where ``a = 0``) with no domain guard. Derivatives as
    :class:`LogMix`'s: ``d/dc1 = Sigmoid(u)/M``, ``d/dc2 = Sigmoid(-u)/M``,
    ``d/du = (c1 - c2) w`` with the weight ``w = Sigmoid(u) Sigmoid(-u)/M``.
    """

    nargs = 3

    def _mp(self, c1: Any, c2: Any, u: Any) -> Any:
        return _real_log(c1 / (1 + mpmath.exp(-u)) + c2 / (1 + mpmath.exp(u)))

    def weight(self) -> sympy.Expr:
        """``Sigmoid(u) Sigmoid(-u) / M`` (see :func:`_mixture_weight`)."""
        return _mixture_weight(self.args[2], self)

    def weight_is_bounded(self) -> bool:
        """Whether :meth:`weight` is at most ``2 / (c1 + c2)``: the coefficients sum to a
        positive number (``y + (1 - y) = 1``), since ``M >= max(c1, c2) Sigmoid(-|u|)``
        for ``c1, c2 >= 0``, and a coefficient like ``y`` or ``1 - y`` is exactly 0 only
        inside that domain. Code generation then needs no ``zero_times`` around it."""
        total = sympy.expand(self.args[0] + self.args[1])
        return bool(total.is_number and total > 0)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        c1, c2, u = self.args
        if argindex == 1:
            return sympy.exp(-Softplus(-u) - self)
        if argindex == 2:
            return sympy.exp(-Softplus(u) - self)
        return (c1 - c2) * self.weight()

    def _eval_rewrite_as_log(
        self, c1: sympy.Expr, c2: sympy.Expr, u: sympy.Expr, **kwargs: object
    ) -> sympy.Expr:
        return sympy.log(c1 / (1 + sympy.exp(-u)) + c2 / (1 + sympy.exp(u)))

    def _sympystr(self, printer: Any) -> str:
        c1, c2, u = (printer.parenthesize(a, 50) for a in self.args)
        return f"log({c1}*sigmoid({printer._print(self.args[2])}) + {c2}*sigmoid(-{u}))"

    def _eval_is_real(self) -> bool | None:
        return all(a.is_real for a in self.args) or None


class KeptLog(_Numeric):
    """``log(u)`` that the stabiliser leaves alone (the unguarded branch of a rewrite)."""

    def _mp(self, u: Any) -> Any:
        return _real_log(u)

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return 1 / self.args[0]

    def _eval_rewrite_as_log(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(u)

    def _sympystr(self, printer: Any) -> str:
        return f"log({printer._print(self.args[0])})"


class LogCosh(_Numeric):
    """``log(cosh(u)) = |u| + softplus(-2|u|) - log 2``, stable for large ``|u|``."""

    def _mp(self, u: Any) -> Any:
        return mpmath.log1p(2 * mpmath.sinh(u / 2) ** 2)  # cosh u = 1 + 2 sinh(u/2)**2

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
    # (1 + exp(u))**e -> Sigmoid(-u)**(-e), for any exponent (e.g. sigmoid(x)**gamma)
    if base.is_Add and len(base.args) == 2:
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
    # exp(a) * exp(b) -> exp(a + b): no inf * 0 when a -> inf and b -> -inf
    exps = [f for f in e.args if isinstance(f, sympy.exp)]
    if len(exps) > 1:
        rest = [f for f in e.args if not isinstance(f, sympy.exp)]
        return sympy.Mul(sympy.exp(sympy.Add(*(f.args[0] for f in exps))), *rest)
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
    # 1 - exp(u) -> -expm1(u)   (1 - p_t with p_t = exp(log p_t), no cancellation)
    if const and _is_one(const[0]):
        for t in terms:
            inner = _neg_term_of(t, sympy.exp)
            if inner is not None:
                rest = [x for x in terms if x is not t and x is not const[0]]
                return sympy.Add(-expm1(inner.args[0]), *rest)
    # exp(u) - 1 -> expm1(u)
    if const and const[0] == sympy.S.NegativeOne:
        for t in terms:
            if isinstance(t, sympy.exp):
                rest = [x for x in terms if x is not t and x is not const[0]]
                return sympy.Add(expm1(t.args[0]), *rest)
    return e


def _sigmoid_mixture(arg: sympy.Add) -> sympy.Expr | None:
    """``log(sum_k c_k Sigmoid(v_k))`` as :class:`LogMixPair` (two terms in ``u`` and
    ``-u``, any real coefficients) or :class:`LogMix` (``None``: not such a sum).

    :class:`LogMix` holds for ``c_k >= 0``. Where a coefficient's sign is unknown
    (``1 - y`` for a target ``y``), it is guarded, and the plain logarithm
    (:class:`KeptLog`) is kept for ``c_k < 0``.
    """
    pairs = []
    for term in arg.args:
        sigmoids = [f for f in sympy.Mul.make_args(term) if isinstance(f, Sigmoid)]
        if len(sigmoids) != 1:
            return None
        c = term / sigmoids[0]
        if c.has(Sigmoid) or c.has(sympy.I):
            return None
        pairs.append((c, sigmoids[0].args[0]))
    if len(pairs) == 2 and pairs[1][1] == -pairs[0][1]:
        return LogMixPair(pairs[0][0], pairs[1][0], pairs[0][1])
    conditions = []
    for c, _ in pairs:
        if c.is_number:
            if not c.is_positive:
                return None
        elif not c.is_nonnegative:
            conditions.append(sympy.Ge(c, 0))
    mixture = LogMix(*(a for pair in pairs for a in pair))
    if not conditions:
        return mixture
    # (Second derivatives through autograd can be NaN here, off the domain or where the
    # plain sum underflows: where() selects values, but autograd multiplies the untaken
    # branch's zero gradient by its derivative. Making both branches' arguments harmless
    # where untaken was tried: a where() around a coefficient hides the vanishing factor
    # codegen.guard_vanishing_products needs, and first derivatives became NaN.)
    return sympy.Piecewise((mixture, sympy.And(*conditions)), (KeptLog(arg), True))


def _rule_log(e: sympy.log) -> sympy.Expr:
    (arg,) = e.args
    if arg.is_Add and (mixture := _sigmoid_mixture(arg)) is not None:
        return mixture
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
    (sympy.Basic, lambda e: _rule_class(e)),
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

    def at_node(new: sympy.Basic, visit: Callable[[sympy.Basic], sympy.Basic]) -> sympy.Basic:
        for _ in range(8):  # a rule may enable another at the same node
            before = new
            for cls, rule in _RULES:
                if isinstance(new, cls):
                    new = rule(new)
            if new == before:
                break
            if not new.is_Atom:
                new = new.func(*(visit(a) for a in new.args))
        return new

    return _bottom_up(expr, at_node)


def _bottom_up(
    expr: sympy.Basic,
    at_node: Callable[[sympy.Basic, Callable[[sympy.Basic], sympy.Basic]], sympy.Basic],
) -> sympy.Basic:
    """Rebuild ``expr`` from the leaves up, applying ``at_node`` to every rebuilt node.

    Memoised per subexpression (shared subtrees are rewritten once). ``at_node`` gets the
    node, its arguments already rewritten, and the rewriting function itself, for
    arguments a rule creates.
    """
    memo: dict[sympy.Basic, sympy.Basic] = {}

    def visit(e: sympy.Basic) -> sympy.Basic:
        if e.is_Atom:
            return e
        hit = memo.get(e)
        if hit is not None:
            return hit
        args = tuple(visit(a) for a in e.args)
        new = at_node(e.func(*args) if args != e.args else e, visit)
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
    if order == 1:
        return _diff(expr, wrt)
    return sympy.diff(expr, wrt, order)


def _guard_products(expr: sympy.Expr) -> sympy.Expr:
    """Products whose vanishing factor must win over an infinite one.

    * ``Heaviside(u) * X`` (from ``d Max/dx``) becomes ``where(u > 0, X, ...)``: where
      the branch is not taken the product is 0 even if ``X`` is infinite there (the
      derivative of ``max(log p, -100)`` at ``p = 0``).
    * ``b**e * log(b)`` (from ``d b**e / de``) is 0 where ``b == 0`` and ``e > 0``;
      likewise ``b**e * log1p(x)`` with ``b = 1 + x``.
    * ``x / expm1(x)`` (from ``d (-expm1(x))**e / dx`` times a factor ``x``, the focal
      loss as ``p_t -> 1``) is 1 at ``x == 0``, not ``0/0``.
    * ``exp(a + log(b)) / b`` (from differentiating ``logsumexp(z + log(y))`` by a
      target ``y``) is ``exp(a)``, also at ``b == 0``.
    """

    def rule(m: sympy.Expr) -> sympy.Expr:
        if not isinstance(m, sympy.Mul):
            return m
        factors = list(m.args)
        for f in factors:
            if isinstance(f, sympy.Heaviside):
                u = f.args[0]
                h0 = f.args[1] if len(f.args) > 1 else sympy.S.Half
                rest = sympy.Mul(*[g for g in factors if g is not f])
                return sympy.Piecewise(
                    (rest, u > 0), (h0 * rest, sympy.Eq(u, 0)), (sympy.S.Zero, True)
                )
        logs = {f.args[0]: f for f in factors if isinstance(f, sympy.log)}
        logs.update({1 + f.args[0]: f for f in factors if isinstance(f, log1p)})
        for f in factors:
            if f.is_Pow and f.base in logs and f.exp.free_symbols:
                return sympy.Piecewise(
                    (sympy.S.Zero, sympy.And(sympy.Eq(f.base, 0), f.exp >= 0)), (m, True)
                )
        for f in factors:
            if f.is_Pow and f.exp == -1:
                for g in factors:
                    if isinstance(g, (sympy.exp, KeptExp)) and isinstance(g.args[0], sympy.Add):
                        log_b = dsl.log(f.base)
                        if log_b in g.args[0].args:
                            rest = [h for h in factors if h is not f and h is not g]
                            return g.func(g.args[0] - log_b) * sympy.Mul(*rest)
        for f in factors:
            if f.is_Pow and f.exp == -1 and isinstance(f.base, expm1):
                x = f.base.args[0]
                for sign in (1, -1):
                    if sign * x in factors:
                        rest = [g for g in factors if g is not f]
                        rest.remove(sign * x)
                        ratio = sympy.Piecewise((sympy.S.One, sympy.Eq(x, 0)), (x / f.base, True))
                        return sign * ratio * sympy.Mul(*rest)
        return m

    return expr.replace(lambda e: isinstance(e, sympy.Mul), rule)


def merge_powers(expr: sympy.Expr) -> sympy.Expr:
    """Merge the factors of every product that share a base: ``b**g / b -> b**(g-1)``.

    What ``sympy.powsimp(expr, deep=True, combine="exp")`` does for the products
    differentiation creates (``b**g * b**-1``, ``b * b**g``, ``exp(a)*exp(c)``), without
    its assumption queries: ``powsimp`` took ~95% of the time of a stable derivative
    (cProfile on the focal loss, docs/performance.md). ``Mul`` itself already merges
    powers with numeric exponents, but not a symbolic power with its base.

    Args:
        expr: any SymPy expression.

    Returns:
        The expression with each product's same-base factors merged into one power.
    """
    return _bottom_up(
        expr, lambda new, _: _merge_mul(new) if new.is_Mul and new.is_commutative else new
    )


def _powsimp_rules(args: tuple[sympy.Expr, ...]) -> bool:
    """Whether a product needs ``powsimp``'s rules beyond merging equal bases."""
    for f in args:
        if f.is_Pow and f.base.is_Mul:  # x*y*sqrt(x*y) -> (x*y)**(3/2)
            return True
        if f is sympy.S.ImaginaryUnit:  # I*(-1)**y -> (-1)**(y + 1/2)
            return True
        fraction = f.is_Rational and not f.is_Integer
        if fraction and any(g.is_Pow and g.base.is_Number for g in args):  # 2**x/2
            return True
    # (y - x)**g * (x - y) -> -(y - x)**(g + 1): two sums that are each other's negation
    sums = [b for b in {f.base if f.is_Pow else f for f in args} if b.is_Add]
    return any(
        len(a.args) == len(b.args) and a.free_symbols == b.free_symbols and -a == b
        for i, a in enumerate(sums)
        for b in sums[i + 1 :]
    )


def _merge_mul(m: sympy.Mul) -> sympy.Expr:
    if _powsimp_rules(m.args):
        return sympy.powsimp(m, deep=False, combine="exp")
    groups: dict[sympy.Basic, list[sympy.Expr]] = {}
    for f in m.args:
        if f.is_Pow:
            base, ex = f.args
        elif isinstance(f, sympy.exp):
            base, ex = sympy.E, f.args[0]
        else:
            base, ex = f, sympy.S.One
        groups.setdefault(base, []).append(ex)
    if len(groups) == len(m.args):
        return m
    return sympy.Mul(*(base ** sympy.Add(*exps) for base, exps in groups.items()))


#: functions that are constant between jumps: their derivative is 0 almost everywhere
_STEP_FUNCTIONS = (sympy.floor, sympy.ceiling, sympy.sign, sympy.Heaviside)


def almost_everywhere(expr: sympy.Expr) -> sympy.Expr:
    """The derivative ``expr`` as compiled code computes it: 0 where it is a point mass.

    SymPy differentiates ``Heaviside(u)`` and ``sign(u)`` to ``DiracDelta(u)`` terms
    and leaves ``Derivative(floor(u), x)`` unevaluated. Both are 0 except on a set of
    measure zero, and that is the value autograd gives (``torch.floor``, ``torch.sign``
    and ``torch.heaviside``-style steps have gradient 0), so kernels use 0. ``grad()``
    keeps SymPy's exact form for printing.
    """
    if not expr.has(sympy.DiracDelta, sympy.Derivative):
        return expr
    # (bottom-up: d floor(u)/dx is Subs(Derivative(floor(xi), xi), xi, u), whose
    # Derivative becomes 0 first, then the Subs of 0)
    return expr.replace(
        lambda e: (
            isinstance(e, sympy.DiracDelta)
            or (isinstance(e, sympy.Derivative) and isinstance(e.expr, _STEP_FUNCTIONS))
            or (isinstance(e, sympy.Subs) and e.expr == 0)
        ),
        lambda e: sympy.S.Zero,
    )


def _tidy(expr: sympy.Expr) -> sympy.Expr:
    # Point masses (DiracDelta, d floor/dx) are 0 almost everywhere; merge powers of
    # one base (b**g / b -> b**(g-1)) so no 0/0 remains, then re-stabilise forms the
    # differentiation created (1 - Sigmoid(u), ...), then keep vanishing chain-rule
    # factors from meeting infinite ones.
    return _guard_products(stabilize(merge_powers(almost_everywhere(expr))))


def stable_derivatives(stable_expr: sympy.Expr, wrt: Iterable[sympy.Symbol]) -> list[sympy.Expr]:
    """Derivatives of an already-stabilised expression, themselves stable.

    Args:
        stable_expr: output of :func:`stabilize`.
        wrt: symbols to differentiate with respect to, in order.

    Returns:
        One stable expression per symbol.
    """
    return [_tidy(_diff(stable_expr, s)) for s in wrt]


# ---------------------------------------------------------------------------
# The class axis
# ---------------------------------------------------------------------------
# A loss with ``classes=True`` is written over per-class quantities (the logits z_c,
# the targets y_c, per-class params w_c) and must reduce the class axis with one of the
# reductions below.  Symbolically, a per-class symbol stands for its value at "the
# current class"; a reduction is a per-sample quantity.


def _latex_power(body: str, exp: Any) -> str:
    # SymPy's LaTeX printer passes exp= when the function is raised to a power
    return body if exp is None else r"\left(" + body + r"\right)^{" + str(exp) + "}"


class _ClassReduction(sympy.Function):
    """Base of the class-axis reductions (one argument: a per-class expression)."""

    nargs = 1
    _label = "reduce"

    def _sympystr(self, printer: Any) -> str:
        return f"{self._label}({printer._print(self.args[0])})"

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def weight(self) -> sympy.Expr:
        """d(reduction)/d(u_c) as a per-class expression (u = the argument)."""
        raise NotImplementedError

    def _eval_derivative(self, s: sympy.Symbol) -> sympy.Expr:
        # derivative w.r.t. a per-sample symbol: sum over classes of weight * du/ds
        du = _diff(self.args[0], s)
        if du == 0:
            return sympy.S.Zero
        return CSum(self.weight() * du)


class CSum(_ClassReduction):
    """Sum over the class axis: ``csum(u) = sum_c u_c``."""

    _label = "csum"

    def weight(self) -> sympy.Expr:
        return sympy.S.One

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _latex_power(r"\sum_{c}\left(" + printer._print(self.args[0]) + r"\right)", exp)


class KeptExp(_Numeric):
    """``exp(u)`` that SymPy does not split: ``exp(a + log(y))`` stays one exponential.

    SymPy rewrites ``exp(a + log(y))`` as ``y * exp(a)``, which is ``0 * inf`` where
    ``y = 0`` and ``a`` is large; the softmax weights of a log-sum-exp need the fused form.
    """

    def _mp(self, u: Any) -> Any:
        return mpmath.exp(u)

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return self

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.exp(u)

    def _sympystr(self, printer: Any) -> str:
        return f"exp({printer._print(self.args[0])})"

    def _latex(self, printer: Any) -> str:
        return "e^{" + printer._print(self.args[0]) + "}"

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class CLogSumExp(_ClassReduction):
    """``log(sum_c exp(u_c))`` over the class axis, evaluated with the max-shift."""

    _label = "clogsumexp"

    def weight(self) -> sympy.Expr:
        return KeptExp(self.args[0] - self)

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs: object) -> sympy.Expr:
        return sympy.log(CSum(sympy.exp(u)))

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _latex_power(r"\log\sum_{c} e^{" + printer._print(self.args[0]) + "}", exp)


class CMax(_ClassReduction):
    """Maximum over the class axis (gradient shared evenly among ties, as ``amax``)."""

    _label = "cmax"

    def weight(self) -> sympy.Expr:
        hit = sympy.Piecewise(
            (1, sympy.Eq(self.args[0], self, evaluate=False)), (0, True), evaluate=False
        )
        return hit / CSum(hit)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _latex_power(r"\max_{c}\left(" + printer._print(self.args[0]) + r"\right)", exp)


CLASS_REDUCTIONS = (CSum, CLogSumExp, CMax)


def _top_reductions(expr: sympy.Basic) -> list[sympy.Expr]:
    """Reduction nodes of ``expr`` that are not inside another reduction."""
    found: list[sympy.Expr] = []

    def walk(e: sympy.Basic) -> None:
        if isinstance(e, _ClassReduction):
            if e not in found:
                found.append(e)
            return
        for a in e.args:
            walk(a)

    walk(expr)
    return found


def per_class_outside_reductions(
    expr: sympy.Expr, per_class: Iterable[sympy.Symbol]
) -> set[sympy.Symbol]:
    """Per-class symbols that ``expr`` uses outside every class reduction."""
    reds = _top_reductions(expr)
    dummies = {r: sympy.Dummy() for r in reds}
    return expr.xreplace(dummies).free_symbols & set(per_class)


def class_derivative(expr: sympy.Expr, v: sympy.Symbol) -> sympy.Expr:
    """Derivative of ``expr`` with respect to the per-class symbol ``v`` at class j.

    ``expr`` may use per-class symbols directly (they then mean "at class j") and
    through class reductions.  For a reduction ``R(u)`` with weight
    ``w_c = dR/du_c``::

        dR/dv_j = w_j du_j/dv_j + sum_inner csum(w * du/dr_inner) * dr_inner/dv_j

    Args:
        expr: a (stable or plain) expression with class reductions.
        v: a per-class symbol.

    Returns:
        The derivative as a per-class expression (it may contain reductions).
    """
    reds = _top_reductions(expr)
    dummies = [sympy.Dummy(f"r{i}", real=True) for i in range(len(reds))]
    e_r = expr.xreplace(dict(zip(reds, dummies, strict=False)))
    out = _diff(e_r, v)
    for red, r in zip(reds, dummies, strict=False):
        d_r = _diff(e_r, r)
        if d_r != 0:
            out += d_r * _reduction_derivative(red, v)
    return out.xreplace(dict(zip(dummies, reds, strict=False)))


def _reduction_derivative(red: _ClassReduction, v: sympy.Symbol) -> sympy.Expr:
    (u,) = red.args
    w = red.weight()
    inner = _top_reductions(u)
    dummies = [sympy.Dummy(f"i{i}", real=True) for i in range(len(inner))]
    u_r = u.xreplace(dict(zip(inner, dummies, strict=False)))
    out = w * _diff(u_r, v)
    for red_in, r in zip(inner, dummies, strict=False):
        d_r = _diff(u_r, r)
        if d_r != 0:
            out += CSum(w * d_r) * _reduction_derivative(red_in, v)
    return out.xreplace(dict(zip(dummies, inner, strict=False)))


def simplify_reductions(expr: sympy.Expr, per_class: Iterable[sympy.Symbol]) -> sympy.Expr:
    """Linear algebra of ``csum``: split sums, pull out per-sample factors.

    ``csum(a + b) -> csum(a) + csum(b)``, ``csum(s * u) -> s * csum(u)`` when ``s`` is
    per-sample (no per-class symbol outside a reduction).
    """
    per_class = set(per_class)

    def is_per_sample(e: sympy.Expr) -> bool:
        return not per_class_outside_reductions(e, per_class)

    def rule(e: sympy.Expr) -> sympy.Expr:
        if not isinstance(e, CSum):
            return e
        (u,) = e.args
        u = sympy.expand(
            u, deep=False, mul=True, power_exp=False, power_base=False, log=False, multinomial=False
        )
        terms = []
        for t in sympy.Add.make_args(u):
            outside, inside = [], []
            for f in sympy.Mul.make_args(t):
                (outside if is_per_sample(f) else inside).append(f)
            if not inside:
                terms.append(sympy.Mul(*outside) * CSum(sympy.S.One))
            else:
                terms.append(sympy.Mul(*outside) * CSum(sympy.Mul(*inside)))
        return sympy.Add(*terms)

    return expr.replace(lambda e: isinstance(e, CSum), rule)


def shift_by_class_max(
    outputs: Sequence[tuple[str, sympy.Expr]],
    z: sympy.Symbol,
    z_target: sympy.Symbol | None,
    per_class: Iterable[sympy.Symbol],
) -> tuple[list[tuple[str, sympy.Expr]], sympy.Symbol, sympy.Symbol] | None:
    """The outputs in terms of ``z - max_c z``, where that is exact: ``None`` otherwise.

    Float32 ``z_y - clogsumexp(z)`` cancels two numbers of size ``|z|`` (the
    log-sum-exp is ``m + log S``): at logits near 1e4 the cross-entropy lost four
    digits, where ``F.cross_entropy`` computes ``(z_y - m) - log S``.  Here ``z`` is
    replaced by ``zs + M`` (``M``: a per-sample symbol), ``M`` is pulled out of
    ``clogsumexp``/``cmax`` (``clogsumexp(u + M) = M + clogsumexp(u)``), and where SymPy's
    sums then cancel every ``M`` the outputs depend on ``zs`` alone: the identity
    ``f(z) = g(z - M)`` holds for *any* ``M``, so the kernel may use the class max.
    Where an ``M`` survives (a loss that is not shift-invariant, or not visibly so)
    nothing changes.

    Returns:
        ``(outputs, zs, zs_target)``: the rewritten outputs, the symbol for the shifted
        prediction, and the one for it at the target class (index targets).
    """
    M = sympy.Dummy("zmax", real=True)
    zs = sympy.Symbol(f"{z.name}@shifted", real=True)
    zs_t = sympy.Symbol(f"{z.name}@shifted@target", real=True)
    per_class = (set(per_class) - {z}) | {zs}
    sub = {z: zs + M}
    if z_target is not None:
        sub[z_target] = zs_t + M
    memo: dict[sympy.Basic, sympy.Basic] = {}

    def rebuild(e: sympy.Basic) -> sympy.Basic:
        hit = memo.get(e)
        if hit is not None:
            return hit
        out = e
        if e.args:
            args = [rebuild(a) for a in e.args]
            if any(a is not b for a, b in zip(args, e.args, strict=True)):
                out = e.func(*args)
            if isinstance(out, sympy.Mul) and any(
                isinstance(f, sympy.Add) and f.has(M) for f in out.args
            ):
                # s*(zs + M - d) -> s*zs + s*M - s*d: the M terms can meet their
                # counterparts (a scale such as LDAM's s)
                out = sympy.expand_mul(out)
            if isinstance(out, (CLogSumExp, CMax)):
                terms = sympy.Add.make_args(out.args[0])
                moved = [
                    t for t in terms if t.has(M) and not per_class_outside_reductions(t, per_class)
                ]
                if moved:
                    kept = [t for t in terms if t not in moved]
                    out = sympy.Add(*moved) + out.func(sympy.Add(*kept))
        memo[e] = out
        return out

    shifted = []
    for label, e in outputs:
        new = rebuild(e.xreplace(sub))
        if new.has(M):
            return None
        shifted.append((label, new))
    return shifted, zs, zs_t


def _rule_class(e: sympy.Basic) -> sympy.Basic:
    # log(csum(exp(u))) -> clogsumexp(u)
    if isinstance(e, sympy.log) and isinstance(e.args[0], CSum):
        inner = e.args[0].args[0]
        if isinstance(inner, sympy.exp):
            return CLogSumExp(inner.args[0])
    # log(csum(f * exp(u))) -> clogsumexp(u + log(f)): no log(0) from an underflowed
    # softmax (e.g. log p_t with p_t = csum(y * softmax(z)))
    if isinstance(e, sympy.log) and isinstance(e.args[0], CSum):
        inner = e.args[0].args[0]
        if isinstance(inner, sympy.Mul):
            exps = [f for f in inner.args if isinstance(f, sympy.exp)]
            if len(exps) == 1:
                rest = [f for f in inner.args if f is not exps[0]]
                return CLogSumExp(exps[0].args[0] + dsl.log(sympy.Mul(*rest)))
    # exp(u) / csum(exp(u)) -> exp(u - clogsumexp(u))
    if isinstance(e, sympy.Mul):
        factors = list(e.args)
        for i, f in enumerate(factors):
            if (
                f.is_Pow
                and f.exp == -1
                and isinstance(f.base, CSum)
                and isinstance(f.base.args[0], sympy.exp)
            ):
                u = f.base.args[0].args[0]
                for j, g in enumerate(factors):
                    if isinstance(g, sympy.exp) and g.args[0] == u:
                        rest = [h for k, h in enumerate(factors) if k not in (i, j)]
                        return sympy.Mul(sympy.exp(u - CLogSumExp(u)), *rest)
    # a power of csum(exp(u)) times exp(u) in other arrangements is left alone
    if isinstance(e, sympy.Pow) and e.exp == -1 and isinstance(e.base, CSum):
        inner = e.base.args[0]
        if isinstance(inner, sympy.exp):
            return sympy.exp(-CLogSumExp(inner.args[0]))
    return e


class NonLinearTargetError(ValueError):
    """The loss uses the target non-linearly, so class-index targets cannot be gathered."""


def _sums_of_products_in(e: sympy.Basic, y: sympy.Symbol) -> bool:
    """Whether ``y`` enters ``e`` only through sums and products.

    The derivative test alone misses a ``y`` inside a function or a condition:
    ``d/dy where(y > 0.5, a, b)`` is 0 almost everywhere, yet the expression is not
    ``a + y*b`` (the review found ``csum(where(y > 0.5, ...))`` gathered as if the
    target were absent).
    """
    if e == y or not e.has(y):
        return True
    if isinstance(e, (sympy.Add, sympy.Mul)):
        return all(_sums_of_products_in(a, y) for a in e.args)
    return False


def gather_targets(
    expr: sympy.Expr,
    target: sympy.Symbol,
    per_class: Iterable[sympy.Symbol],
    gathered: dict[sympy.Symbol, sympy.Symbol],
) -> sympy.Expr:
    """Rewrite a class-axis loss for class-index targets (one-hot ``target``).

    Every ``csum(A + y*B)`` (linear in the target ``y``) becomes
    ``csum(A) + B[at the target class]``: per-class symbols in ``B`` outside reductions
    are replaced by their gathered counterparts (``gathered``: symbol -> symbol
    standing for its value at the target class).  No one-hot is ever materialised.

    Raises:
        NonLinearTargetError: ``y`` appears non-linearly or in a non-sum reduction.
    """
    per_class = set(per_class)

    def at_target(b: sympy.Expr) -> sympy.Expr:
        reds = _top_reductions(b)
        dummies = [sympy.Dummy() for _ in reds]
        masked = b.xreplace(dict(zip(reds, dummies, strict=False)))
        masked = masked.xreplace({s: gathered[s] for s in masked.free_symbols & per_class})
        return masked.xreplace(dict(zip(dummies, reds, strict=False)))

    def at_node(node: sympy.Basic, _: Callable[[sympy.Basic], sympy.Basic]) -> sympy.Basic:
        if isinstance(node, _ClassReduction) and node.has(target):
            (u,) = node.args
            if not isinstance(node, CSum):
                raise NonLinearTargetError(
                    f"the target is used inside {node._label}(); class-index targets "
                    "need it only in csum(...) and linearly"
                )
            b = _diff(u, target)
            a = u.subs(target, 0)
            if not _sums_of_products_in(u, target) or b.has(target) or a.has(target):
                raise NonLinearTargetError(
                    "the target is used non-linearly inside csum(); give probability "
                    "(one-hot) targets instead of class indices"
                )
            return (CSum(a) if a != 0 else sympy.S.Zero) + at_target(b)
        return node

    out = _bottom_up(expr, at_node)
    if out.has(target):
        raise NonLinearTargetError("the target is used outside csum(); cannot gather class indices")
    return out
