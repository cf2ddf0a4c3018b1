"""First derivatives of SymPy expressions, without SymPy's per-node bookkeeping.

``sympy.diff`` goes through ``Derivative.__new__`` for every sub-expression the chain
rule visits. Each visit asks the assumptions system whether the partial result is
zero (``obj.is_zero``, ``da.is_zero``), walks the result to canonicalise unevaluated
``Derivative`` objects, and recomputes ``free_symbols``. On a loss like the focal loss
those queries are about a third of the time it takes to define, differentiate and
generate code for a new loss (measured with cProfile, see docs/performance.md).

:func:`diff` applies the same rules as SymPy's ``_eval_derivative`` methods (``Add``,
``Mul``, ``Pow``, ``Function`` via ``fdiff``, ``Piecewise``), building the same
canonical ``Add``/``Mul``/``Pow`` results, but memoises per node and skips the queries:
a literal ``0`` is recognised structurally. Anything else (functions with their own
``_eval_derivative``, ``Derivative``, bound variables, non-commutative products,
subclasses such as ``MatAdd``, matrix expressions, plain Python numbers) is handed to
``sympy.diff`` unchanged, so the result is SymPy's in every case
(``tests/test_differentiate.py``).
"""

from __future__ import annotations

import sympy
from sympy.core.basic import Basic
from sympy.core.function import ArgumentIndexError

from customloss import dsl

__all__ = ["diff"]

_FUNCTION_RULE = sympy.Function._eval_derivative
_DEFAULT_N_TIMES = Basic._eval_derivative_n_times


def _plain_function(cls: type) -> bool:
    # a Function whose derivative SymPy computes with the generic fdiff chain rule
    return (
        cls._eval_derivative is _FUNCTION_RULE and cls._eval_derivative_n_times is _DEFAULT_N_TIMES
    )


def diff(expr: sympy.Expr, s: sympy.Symbol) -> sympy.Expr:
    """``d expr / d s``, equal to ``sympy.diff(expr, s)``.

    Args:
        expr: any SymPy expression.
        s: the symbol to differentiate with respect to.

    Returns:
        The first derivative, in SymPy's canonical form.
    """
    expr = sympy.sympify(expr)
    if not isinstance(s, sympy.Symbol) or not isinstance(expr, Basic) or expr.is_Matrix:
        return sympy.diff(expr, s)  # matrices: a zero derivative keeps its shape
    depends: dict[Basic, bool] = {}
    done: dict[Basic, sympy.Expr] = {}
    zero, one = sympy.S.Zero, sympy.S.One

    def dep(e: Basic) -> bool:
        # whether ``s`` occurs in ``e`` (an over-estimate for bound variables, which
        # the fallback to sympy.diff then handles)
        r = depends.get(e)
        if r is None:
            r = e == s if e.is_Symbol else any(dep(a) for a in e.args)
            depends[e] = r
        return r

    def d(e: sympy.Expr) -> sympy.Expr:
        if not dep(e):
            return zero
        if e == s:
            return one
        r = done.get(e)
        if r is None:
            r = _rule(e)
            done[e] = r
        return r

    def _rule(e: sympy.Expr) -> sympy.Expr:
        # exact types: MatAdd/MatMul and other subclasses have derivatives of their own
        cls = type(e)
        if cls is sympy.Add:
            return sympy.Add(*[d(a) for a in e.args])
        if cls is sympy.Mul and e.is_commutative:
            args = e.args
            return sympy.Add(
                *[sympy.Mul(*args[:i], d(a), *args[i + 1 :]) for i, a in enumerate(args) if dep(a)]
            )
        if cls is sympy.Pow:
            base, ex = e.args
            d_ex = d(ex)
            if d_ex is zero:  # SymPy builds 0*log(base) here, which is 0
                return e * (d(base) * ex / base)
            return e * (d_ex * dsl.log(base) + d(base) * ex / base)
        if isinstance(e, sympy.Piecewise):
            return e.func(*[(d(piece), cond) for piece, cond in e.args])
        if isinstance(e, sympy.Function) and _plain_function(type(e)):
            terms = []
            for i, a in enumerate(e.args, 1):
                da = d(a)
                if da is zero or (da.has(sympy.Piecewise) and da.is_zero):
                    # SymPy skips any term whose inner derivative is_zero; short of a
                    # literal 0, such a term holds a Piecewise of zeros (one with no
                    # default branch, which SymPy does not fold to 0)
                    continue
                try:
                    df = e.fdiff(i)
                except ArgumentIndexError:
                    df = sympy.Function.fdiff(e, i)
                terms.append(df * da)
            return sympy.Add(*terms)
        return sympy.diff(e, s)

    return d(expr)
