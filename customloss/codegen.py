"""Table-driven code generation shared by the NumPy and Torch backends.

One printer turns a stable SymPy expression (see :mod:`customloss.calculus`) into
Python source that calls operations on a *runtime namespace* ``R``.  Each backend
supplies its own ``R`` implementing the same operation names, so adding a function is
one entry in :data:`FUNCTION_TABLE` plus one function per backend runtime.

Kernels are generated with shared common subexpressions (``sympy.cse``): one kernel
can return the elementwise loss and any set of its derivatives in one pass.
"""

from __future__ import annotations

import cmath
import linecache
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.printing.str import StrPrinter

__all__ = ["FUNCTION_TABLE", "Kernel", "KernelPrinter", "generate_kernel", "uncompilable"]

#: SymPy function class name -> runtime operation name.
FUNCTION_TABLE: dict[str, str] = {
    "exp": "exp",
    "log": "log",
    "Abs": "abs",
    "sign": "sign",
    "tanh": "tanh",
    "cosh": "cosh",
    "sinh": "sinh",
    "sin": "sin",
    "cos": "cos",
    "atan": "atan",
    "erf": "erf",
    "log1p": "log1p",
    "expm1": "expm1",
    "Sigmoid": "sigmoid",
    "Softplus": "softplus",
    "LogSumExp": "logsumexp",
    "LogCosh": "logcosh",
    "KeptExp": "exp",
    "KeptLog": "log",
    "LogMix": "log_mix",
    "LogMixPair": "log_mix_pt",
    "Max": "maximum",
    "Min": "minimum",
    "floor": "floor",
    "ceiling": "ceil",
}


def uncompilable(expr: sympy.Basic) -> list[str]:
    """Names of the functions in ``expr`` that no generated kernel can compute, sorted.

    A function compiles when :data:`FUNCTION_TABLE` maps it or :class:`KernelPrinter`
    prints it itself (``Piecewise``, ``Heaviside``, the class reductions, ...). Undefined
    functions (``sympy.Function("f")``) never do. ``Loss`` refuses such an expression
    when it is defined, not at its first call.
    """
    from sympy.core.function import AppliedUndef

    bad = set()
    for f in expr.atoms(sympy.Function):
        name = type(f).__name__
        if isinstance(f, AppliedUndef) or (
            name not in FUNCTION_TABLE and f"_print_{name}" not in vars(KernelPrinter)
        ):
            bad.add(name)
    return sorted(bad)


#: the SymPy functions a user's expression may contain (for messages); the others in
#: FUNCTION_TABLE are customloss's internal stable forms
USER_FUNCTIONS = tuple(
    sorted(
        {n for n in FUNCTION_TABLE if n[0].islower() or n in ("Abs", "Max", "Min")}
        | {"Heaviside", "Piecewise"}
    )
)


class KernelPrinter(StrPrinter):
    """Prints stable SymPy expressions as calls on the runtime namespace ``R``.

    Args:
        names: mapping from argument symbols to the Python names used in the kernel.
        ref: the name of the argument whose dtype/device scalar-only results adopt.
    """

    printmethod = "_customloss_code"

    def __init__(self, names: dict[sympy.Symbol, str], ref: str) -> None:
        super().__init__({"order": "none"})
        self._names = names
        self._ref = ref

    # numbers -------------------------------------------------------------
    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sympy.Expr) and expr.is_number and not expr.is_Integer:
            try:
                value = complex(expr.evalf(20))
            except TypeError:  # e.g. csum(1): "a number" to SymPy, C at run time
                return super()._print(expr, **kwargs)
            if not cmath.isfinite(value):
                raise ValueError(
                    f"the generated code would hold the constant {expr} (undefined or "
                    "infinite: the expression or its derivative has no finite value here)"
                )
            if value.imag != 0:
                raise ValueError(f"expression has a complex constant: {expr}")
            return repr(float(value.real))
        return super()._print(expr, **kwargs)

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return str(int(expr))

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        try:
            return self._names[expr]
        except KeyError:
            raise ValueError(f"unknown symbol {expr.name!r} in generated code") from None

    # functions -----------------------------------------------------------
    def _print_Function(self, expr: sympy.Function) -> str:
        name = type(expr).__name__
        op = FUNCTION_TABLE.get(name)
        if op is None:
            raise ValueError(f"no compiled form for the function {name!r}")
        args = [self._print(a) for a in expr.args]
        if op in ("maximum", "minimum") and len(args) > 2:
            out = args[0]
            for a in args[1:]:
                out = f"R.{op}({out}, {a})"
            return out
        return f"R.{op}({', '.join(args)})"

    _print_Max = _print_Function
    _print_Min = _print_Function
    _print_Abs = _print_Function
    _print_exp = _print_Function
    _print_log = _print_Function

    # class-axis reductions (dim 1 of the prediction, kept for broadcasting) --------
    def _print_CSum(self, expr: Any) -> str:
        (u,) = expr.args
        if u.is_number:
            return f"({self._print(u)} * R.nclasses({self._ref}))"
        return f"R.csum({self._print(u)}, {self._ref})"

    def _print_CLogSumExp(self, expr: Any) -> str:
        return f"R.clogsumexp({self._print(expr.args[0])}, {self._ref})"

    def _print_CMax(self, expr: Any) -> str:
        return f"R.cmax({self._print(expr.args[0])}, {self._ref})"

    def _print__SignSelect(self, expr: Any) -> str:
        a, x, z = (self._print(v) for v in expr.args)
        return f"R.where(({a} >= 0), {x}, {z}, {self._ref})"

    def _print__NegAbsExp(self, expr: Any) -> str:
        return f"R.exp(-R.abs({self._print(expr.args[0])}))"

    def _print__ZeroTimes(self, expr: Any) -> str:
        return f"R.zero_times({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print__Guarded(self, expr: Any) -> str:
        cond, u = expr.args
        return f"R.guard({self._print(cond)}, {self._print(u)}, {self._ref})"

    def _print_Heaviside(self, expr: sympy.Heaviside) -> str:
        h0 = expr.args[1] if len(expr.args) > 1 else sympy.S.Half
        return f"R.heaviside({self._print(expr.args[0])}, {float(h0)!r})"

    def _print_Pow(self, expr: sympy.Pow, rational: bool = False) -> str:
        base, ex = expr.args
        b = self.parenthesize(base, 1000)  # always parenthesise the base
        if ex.free_symbols:
            # symbolic exponent (a param): the safe power keeps 0*inf away, see R.spow
            return f"R.spow({self._print(base)}, {self._print(ex)})"
        if ex == sympy.S.Half:
            return f"R.sqrt({self._print(base)})"
        if ex == -sympy.S.Half:
            return f"(1.0/R.sqrt({self._print(base)}))"
        if ex.is_Integer:
            n = int(ex)
            if n == -1:
                return f"(1.0/{b})"
            if n < 0:
                return f"(1.0/{b}**{-n})"
            return f"{b}**{n}"
        return f"{b}**{self._print(ex)}"

    # logic ---------------------------------------------------------------
    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        pieces = list(expr.args)
        last_val, last_cond = pieces[-1]
        if last_cond != sympy.true:
            # no 'otherwise' branch: undefined there, as in SymPy -> nan
            out = (
                f"R.where({self._print(last_cond)}, {self._print(last_val)}, math.nan, {self._ref})"
            )
        else:
            out = self._print(last_val)
        for val, cond in reversed(pieces[:-1]):
            out = f"R.where({self._print(cond)}, {self._print(val)}, {out}, {self._ref})"
        return out

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr: sympy.And) -> str:
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sympy.Or) -> str:
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print__Unless(self, expr: Any) -> str:
        return f"R.not_({self._print(expr.args[0])})"

    def _print_Not(self, expr: sympy.Not) -> str:
        # R.not_, not ~: a condition on a param specialised to a constant is a Python
        # bool, and ~True is -2
        return f"R.not_({self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr: Any) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: Any) -> str:
        return "False"


class _NegAbsExp(sympy.Function):
    """``exp(-|a|)``: the one transcendental shared by sigmoid(+-a) and softplus(+-a)."""

    nargs = 1


class _SignSelect(sympy.Function):
    """``where(a >= 0, x, z)`` as a function (a Piecewise inside a condition would
    become SymPy's ``ITE``)."""

    nargs = 3


class _ZeroTimes(sympy.Function):
    """``f * g`` that is exactly 0 where ``f`` is 0, also where ``g`` overflowed to inf.

    Made by :func:`guard_vanishing_products`, printed as ``R.zero_times(f, g)``.
    """

    nargs = 2


class _Unless(sympy.logic.boolalg.BooleanFunction):
    """``R.not_(cond)``: true wherever ``cond`` is not (NaN comparisons included)."""

    nargs = 1

    @classmethod
    def eval(cls, cond: Any) -> Any:
        if cond == sympy.true:
            return sympy.false
        if cond == sympy.false:
            return sympy.true
        return None


class _Guarded(sympy.Function):
    """``u`` where ``cond`` holds, else 1 (made by :func:`guard_untaken_branches`).

    Printed as ``R.guard(cond, u, ref)``; never differentiated (it appears only in
    generated kernels, after the symbolic work).
    """

    nargs = 2


def _singular_node(node: sympy.Basic) -> bool:
    """A node whose local derivative is infinite somewhere finite: ``log(u)`` at 0, a
    negative, fractional or symbolic power at 0 (``1/u``, ``sqrt(u)``, ``u**a``)."""
    if isinstance(node, sympy.log) or type(node).__name__ == "log1p":
        return not node.args[0].is_number
    if isinstance(node, sympy.Pow):
        base, ex = node.args
        if base.is_number:
            return False
        return bool(ex.free_symbols) or not (ex.is_Integer and ex >= 0)
    return False


def guard_untaken_branches(expr: sympy.Expr) -> sympy.Expr:
    """Keep the not-taken branch of a ``where`` finite for autograd of the recomputed
    kernel (``create_graph``, forward-mode AD).

    ``where(p > 0, p*log(p), 0)`` computes ``log(p)`` everywhere; at ``p = 0`` autograd
    sends the untaken branch a zero gradient, and ``log``'s local derivative ``1/0``
    turns it into ``nan`` (second derivatives of ``smooth_l1`` at ``beta = 0``, of a
    safe-log loss at 0). Here the argument of each singular operation in a branch is
    ``u`` where the branch is taken and 1 elsewhere: the taken values and every
    derivative there are unchanged, and the untaken branch stays finite (its value is
    discarded; its zero gradient stays zero). ``maximum``/``minimum`` are left alone:
    they compare both sides, so a guarded side could win (the review found bce's clamp
    turned from -100 into 0).
    """

    def guard(e: sympy.Expr, cond: sympy.Basic) -> sympy.Expr:
        if cond == sympy.true or not e.args:
            return e

        def visit(node: sympy.Basic) -> sympy.Basic:
            if not node.args or isinstance(node, sympy.logic.boolalg.Boolean):
                return node  # (conditions are not differentiated)
            if isinstance(node, _Guarded):  # an inner branch's guard: guard inside it too
                inner_cond, u = node.args
                return _Guarded(inner_cond, visit(u))
            if isinstance(node, sympy.Piecewise):
                pieces = [(visit(v), c) for v, c in node.args]
                return sympy.Piecewise(*pieces, evaluate=False)
            args = [visit(a) for a in node.args]
            if _singular_node(node):
                args[0] = _Guarded(cond, args[0])
            if all(a is b for a, b in zip(args, node.args, strict=True)):
                return node
            return node.func(*args, evaluate=False)

        return visit(e)

    def rule(node: sympy.Basic) -> sympy.Basic:
        if isinstance(node, sympy.Piecewise):
            pieces, earlier = [], []
            for val, cond in node.args:
                # where(c, a, b) takes b wherever c is not True, NaN comparisons
                # included: R.not_(c), not SymPy's Not (which flips p > 0 to p <= 0,
                # False at NaN, and would guard away a NaN the result must keep)
                taken = sympy.And(cond, *[_Unless(c) for c in earlier])
                pieces.append((guard(val, taken), cond))
                earlier.append(cond)
            return sympy.Piecewise(*pieces, evaluate=False)
        return node

    if not expr.has(sympy.Piecewise):
        return expr
    return expr.replace(lambda n: isinstance(n, sympy.Piecewise), rule)


def _overflows(g: sympy.Expr) -> bool:
    """A factor that overflows to inf while its true value is finite: a power with a
    constant exponent above 1 of a non-constant base (``x**2``), or ``exp`` of a
    non-constant argument (a ratio of softmax probabilities, ``exp(z_j - z_t)``)."""
    from customloss.calculus import CLogSumExp, KeptExp, LogMixPair

    if isinstance(g, (sympy.exp, KeptExp)):
        a = g.args[0]
        # exp(w - logsumexp(w)) is a softmax probability: at most 1
        softmax = any(a + lse == lse.args[0] for lse in a.atoms(CLogSumExp))
        # a p_t pair's derivative weight whose coefficients sum to a positive number
        bounded = any(g == m.weight() and m.weight_is_bounded() for m in a.atoms(LogMixPair))
        return not a.is_number and not softmax and not bounded
    return isinstance(g, sympy.Pow) and g.exp.is_number and bool(g.exp > 1) and not g.base.is_number


def guard_vanishing_products(expr: sympy.Expr) -> sympy.Expr:
    """Products of a polynomial factor and a power like ``x**2``: 0 where the factor is 0.

    ``y * (p - y)**2`` at ``y = 0`` and ``|p| = 1e30`` in float32 is ``0 * inf = nan``
    while its true value is 0: the square overflowed, the factor is exactly 0.  Such
    products (in the value and in every derivative, *after* differentiation, so no
    derivative is changed) become ``_ZeroTimes(factor, rest)``, which is ``factor *
    rest`` except that an exact 0 factor gives 0 when ``rest`` is ``inf`` (a ``nan`` in
    ``rest`` still propagates; an infinite *input* gives 0 there too, not nan).

    The factor is a polynomial, non-constant factor (``y``, ``w - 1``, ``1 + (w - 1)*y``,
    ``csum(alpha*y)``); ``rest`` holds the rest; the overflowing factors are powers like
    ``x**2`` and ``exp`` of a non-constant argument. Only a product with exactly one such
    factor is guarded: in ``k*y*x**2`` the product ``k*y`` could underflow to 0 from
    non-zero values, and the guard would turn the ``nan`` that reports it into a wrong 0.
    Only products that hold an overflowing factor are touched, so most kernels are
    unchanged. The runtimes write it ``factor * where(factor == 0 & isinf(rest), 0,
    rest)``, so autograd through a recomputed kernel (``create_graph``) still gets
    ``d/dfactor = rest``.
    """

    from customloss.calculus import CSum

    def polynomial(a: sympy.Expr) -> bool:
        # class sums of polynomials (csum(alpha*y)) count as variables
        sums = {c: sympy.Dummy() for c in a.atoms(CSum) if polynomial(c.args[0])}
        a = a.xreplace(sums) if sums else a
        return not a.atoms(sympy.Function) and a.is_polynomial(*a.free_symbols)

    def visit(node: sympy.Expr) -> sympy.Expr:
        if not node.is_Mul or not any(_overflows(a) for a in node.args):
            return node
        zero = [a for a in node.args if not a.is_number and not _overflows(a) and polynomial(a)]
        # exactly one such factor: a product of several (k*y) can underflow to 0 from
        # non-zero values, and then 0 would hide a true value that nan reports
        if len(zero) != 1:
            return node
        rest = [a for a in node.args if a not in zero]
        return _ZeroTimes(sympy.Mul(*zero), sympy.Mul(*rest))

    return expr.replace(lambda n: n.is_Mul, visit)


def lower_for_speed(exprs: Sequence[sympy.Expr]) -> list[sympy.Expr]:
    """Rewrite stable expressions into forms with fewer transcendental calls.

    For every argument ``a`` of ``Sigmoid``/``Softplus`` (up to sign), one
    ``e = exp(-|a|)`` and ``r = 1 / (1 + e)`` serve all four of ``sigmoid(+-a)``
    (``r`` or ``e r``, chosen by the sign of ``a``: no ``1 - s`` cancellation) and
    ``softplus(+-a) = max(+-a, 0) + log1p(e)``; and ``b**g`` becomes ``b * b**(g-1)``
    when ``b**(g-1)`` is needed anyway (one power instead of two).

    The result is for *evaluation only* (forward passes, NumPy): its derivative at
    ``a = 0`` is not the derivative of the original, so differentiable recomputation
    uses the unlowered kernel.
    """
    from sympy.codegen.cfunctions import log1p

    from customloss.calculus import Sigmoid, Softplus

    def canon(u: sympy.Expr) -> tuple[sympy.Expr, bool]:
        return (-u, True) if u.could_extract_minus_sign() else (u, False)

    def sigmoid(node: sympy.Expr) -> sympy.Expr:
        if node.args[0].is_number:  # a constant: printed as its value
            return node
        a, flipped = canon(node.args[0])
        e = _NegAbsExp(a)
        r = 1 / (1 + e)
        big, small = (e * r, r) if flipped else (r, e * r)
        return _SignSelect(a, big, small)

    def softplus(node: sympy.Expr) -> sympy.Expr:
        u = node.args[0]
        if u.is_number:  # a constant: printed as its value
            return node
        a, _ = canon(u)
        return sympy.Max(u, 0) + log1p(_NegAbsExp(a))

    out = []
    for expr in exprs:
        expr = expr.replace(lambda n: isinstance(n, Sigmoid), sigmoid)
        expr = expr.replace(lambda n: isinstance(n, Softplus), softplus)
        pows = {p for p in expr.atoms(sympy.Pow) if p.exp.free_symbols}
        for p in pows:
            lower = sympy.Pow(p.base, p.exp - 1)
            if lower in pows:
                expr = expr.xreplace({p: sympy.Mul(p.base, lower, evaluate=False)})
        out.append(expr)
    return out


@dataclass(frozen=True)
class Kernel:
    """A generated elementwise function and its source.

    ``fn(*args)`` returns a tuple with one array per requested output, each with the
    broadcast shape of the inputs.
    """

    fn: Callable[..., tuple[Any, ...]]
    source: str
    outputs: tuple[str, ...]


_counter = 0
_counter_lock = threading.Lock()


def generate_kernel(
    name: str,
    args: Sequence[sympy.Symbol],
    outputs: Sequence[tuple[str, sympy.Expr]],
    runtime: Any,
    *,
    shape_args: Sequence[sympy.Symbol] = (),
    prelude: Sequence[tuple[sympy.Symbol, str, Sequence[sympy.Symbol]]] = (),
    expand: Sequence[str | None] | None = None,
    fast: bool = False,
    guard_branches: bool = False,
) -> Kernel:
    """Generate, compile and return one fused kernel.

    Args:
        name: used for the function name and in tracebacks.
        args: the kernel's positional arguments, in order.
        outputs: ``(label, expression)`` pairs; common subexpressions are shared.
        runtime: the backend namespace bound to ``R`` in the generated code.
        shape_args: arguments that carry the full elementwise shape; an output that
            depends on none of them is broadcast to the first one.
        prelude: ``(symbol, op, operands)``: ``symbol = R.op(*operands)`` computed first
            (e.g. the prediction gathered at the target class).
        expand: per output, ``"full"`` (broadcast to the reference argument's shape),
            ``"sample"`` (to its shape with the class axis reduced) or ``None``;
            overrides ``shape_args`` when given.
        fast: evaluate-only kernel with fewer transcendental calls (see
            :func:`lower_for_speed`); not for differentiable recomputation.
        guard_branches: a kernel that autograd differentiates again: untaken
            branches are kept finite (see :func:`guard_untaken_branches`).

    Returns:
        The :class:`Kernel`.
    """
    reserved = {"R", "math"}
    names = {
        s: s.name
        if s.name.isidentifier() and s.name not in reserved and not s.name.startswith("_")
        else f"_a{i}"
        for i, s in enumerate(args)
    }
    ref = names[shape_args[0]] if shape_args else names[args[0]]
    for i, (sym, _, _) in enumerate(prelude):
        names[sym] = f"_g{i}"
    printer = KernelPrinter(names, ref)
    exprs = [guard_vanishing_products(e) for _, e in outputs]
    if fast:
        exprs = lower_for_speed(exprs)
    elif guard_branches:
        exprs = [guard_untaken_branches(e) for e in exprs]
    temps = sympy.numbered_symbols("_t")
    replacements, reduced = sympy.cse(exprs, symbols=temps, order="none")
    for sym, _ in replacements:
        names[sym] = sym.name
    ident = "".join(c if c.isalnum() else "_" for c in name)
    lines = [f"def {ident}({', '.join(names[s] for s in args)}):"]
    for sym, op, operands in prelude:
        lines.append(f"    {names[sym]} = R.{op}({', '.join(names[o] for o in operands)})")
    for sym, sub in replacements:
        lines.append(f"    {sym.name} = {_code(printer, sub, name)}")
    shape_set = set(shape_args)
    rets = []
    for i, expr in enumerate(reduced):
        code = _code(printer, expr, f"{name}, output {outputs[i][0]!r}")
        if expr in args:
            # an output that is an argument itself (d(p*y)/dp = y) is copied: the
            # caller owns what it gets back and may change it in place
            code = f"R.copy({code})"
        if expand is not None:
            if expand[i] == "full":
                code = f"R.expand({code}, {ref})"
            elif expand[i] == "sample":
                code = f"R.expand_sample({code}, {ref})"
        elif shape_set and not (_deps(expr, replacements) & shape_set):
            code = f"R.expand({code}, {ref})"
        rets.append(code)
    lines.append(f"    return ({', '.join(rets)},)")
    source = "\n".join(lines) + "\n"
    return kernel_from_source(name, source, ident, [lbl for lbl, _ in outputs], runtime)


def _code(printer: KernelPrinter, expr: sympy.Expr, where: str) -> str:
    """``printer.doprint(expr)``; a refusal (a non-finite constant, ...) names ``where``."""
    try:
        return printer.doprint(expr)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def kernel_from_source(
    name: str, source: str, ident: str, outputs: Sequence[str], runtime: Any
) -> Kernel:
    """Compile generated ``source`` (defining function ``ident``) into a :class:`Kernel`.

    Used for freshly generated kernels and for ones read back from the disk cache
    (:mod:`customloss.diskcache`); the source is registered with :mod:`linecache` so
    tracebacks show the generated line.
    """
    global _counter
    with _counter_lock:
        _counter += 1
        filename = f"<customloss-kernel-{_counter} {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"R": runtime, "math": math}
    exec(compile(source, filename, "exec"), namespace)
    return Kernel(namespace[ident], source, tuple(outputs))


def _deps(expr: sympy.Expr, replacements: list[tuple[sympy.Symbol, sympy.Expr]]) -> set:
    """Free symbols of ``expr`` with CSE temporaries expanded."""
    sub = dict(replacements)
    out: set = set()
    stack = list(expr.free_symbols)
    seen: set = set()
    while stack:
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        if s in sub:
            stack.extend(sub[s].free_symbols)
        else:
            out.add(s)
    return out
