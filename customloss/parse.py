"""Safe parsing of loss strings: text -> SymPy, never executing the text.

The text is parsed with :func:`ast.parse` and checked against a whitelist before any
SymPy object is built: numbers, names (the loss's inputs and params, ``pi``, ``E``),
``+ - * / **``, unary minus/plus, comparisons and ``and``/``or``/``not`` (for
``where`` conditions), and calls of DSL functions (:data:`customloss.dsl.FUNCTIONS`)
with positional arguments.  Everything else is refused with a ``ValueError`` naming
the construct.

The work is bounded before SymPy sees anything: source length, AST node count,
nesting depth, size of integer literals, and the size of constant exponents (so
``9**9**9**9`` is refused in microseconds instead of starting an uninterruptible
big-integer power).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from dataclasses import dataclass

import sympy

from customloss import dsl

__all__ = ["LIMITS", "Limits", "parse_expression"]


@dataclass(frozen=True)
class Limits:
    """Bounds on the text a loss string may contain."""

    max_length: int = 10_000
    max_nodes: int = 2_000
    max_depth: int = 60
    max_int_bits: int = 128
    max_exponent: float = 1_000.0
    max_constant: float = 1e300
    #: bounds on the *symbolic* work an accepted text can cause (differentiation and
    #: common-subexpression elimination grow with these)
    max_product_factors: int = 64
    max_power_tower: int = 3
    max_comparisons: int = 64


LIMITS = Limits()

_BINOPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}
_REFUSED_NAMES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambda expressions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.IfExp: "conditional expressions (use where(cond, a, b))",
    ast.NamedExpr: "assignment expressions",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.JoinedStr: "f-strings",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}
_CONSTANTS = {"pi": sympy.pi, "E": sympy.E}
_COMPARE = {
    ast.Lt: sympy.Lt,
    ast.LtE: sympy.Le,
    ast.Gt: sympy.Gt,
    ast.GtE: sympy.Ge,
    ast.Eq: sympy.Eq,
    ast.NotEq: sympy.Ne,
}


def _fail(msg: str, node: ast.AST | None = None) -> ValueError:
    where = (
        f" (column {node.col_offset + 1})"
        if node is not None and hasattr(node, "col_offset")
        else ""
    )
    return ValueError(msg + where)


def _check_tree(tree: ast.Expression, names: set[str], limits: Limits) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > limits.max_nodes:
            raise _fail(f"expression too large: more than {limits.max_nodes} syntax nodes")
        if depth > limits.max_depth:
            raise _fail(f"expression nested too deeply: more than {limits.max_depth} levels")
        for cls, what in _REFUSED_NAMES.items():
            if isinstance(node, cls):
                raise _fail(f"{what} not allowed in a loss expression", node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise _fail(f"operator {type(node.op).__name__} not allowed (use + - * / **)", node)
            if isinstance(node.op, ast.Pow):
                _check_power(node, limits)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
                raise _fail(f"unary operator {type(node.op).__name__} not allowed", node)
            if isinstance(node.op, ast.Not) and not _is_condition(node.operand):
                raise _fail("'not' applies to comparisons only (e.g. not p > 0)", node)
        elif isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _fail(f"constant {v!r} not allowed (only real numbers)", node)
            if isinstance(v, int) and v.bit_length() > limits.max_int_bits:
                raise _fail("integer literal too large", node)
            if isinstance(v, float) and not math.isfinite(v):
                raise _fail(f"literal {v!r} is not finite", node)
        elif isinstance(node, ast.Name):
            if node.id not in names and node.id not in _CONSTANTS:
                if node.id in dsl.FUNCTIONS:
                    raise _fail(f"function {node.id!r} used without calling it", node)
                raise _fail(f"unknown symbol {node.id!r}", node)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise _fail("only calls of DSL functions are allowed (e.g. log(p))", node)
            if node.func.id not in dsl.FUNCTIONS:
                raise _fail(f"unknown function {node.func.id!r}", node)
            if node.keywords:
                raise _fail(f"keyword arguments not allowed in a call of {node.func.id!r}", node)
            for a in node.args:
                stack.append((a, depth + 1))
            continue
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise _fail(f"comparison {type(op).__name__} not allowed", node)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                if not _is_condition(v):
                    raise _fail("'and'/'or' combine comparisons only (e.g. p > 0 and y < 1)", node)
        else:
            raise _fail(f"{type(node).__name__} not allowed in a loss expression", node)
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)
            ):
                continue
            # a long sum/product is a left-leaning chain, not deep nesting
            same_chain = (
                isinstance(node, ast.BinOp)
                and child is node.left
                and isinstance(child, ast.BinOp)
                and _group(child.op) == _group(node.op)
                and _group(node.op) is not None
            )
            stack.append((child, depth if same_chain else depth + 1))


def _is_condition(node: ast.AST) -> bool:
    return isinstance(node, (ast.Compare, ast.BoolOp)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    )


def _check_complexity(tree: ast.Expression, limits: Limits) -> None:
    """Bound the symbolic work: product sizes, power towers, comparisons, constants."""
    order: list[ast.AST] = []
    parent: dict[int, ast.AST] = {}
    stack: list[ast.AST] = [tree.body]
    while stack:
        node = stack.pop()
        order.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                parent[id(child)] = node
                stack.append(child)
    has_name: dict[int, bool] = {}
    tower: dict[int, int] = {}
    constants: dict[int, float | None] = {}
    comparisons = 0
    for node in reversed(order):  # children before parents
        kids = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
        has_name[id(node)] = (
            (isinstance(node, ast.Name) and node.id not in _CONSTANTS)
            or isinstance(node, ast.Call)
            or any(has_name[id(c)] for c in kids)
        )
        t = max((tower[id(c)] for c in kids), default=0)
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Pow)
            and has_name[id(node.right)]
        ):
            t = max(tower[id(node.left)], tower[id(node.right)]) + 1
            if t > limits.max_power_tower:
                raise _fail(
                    f"powers with symbolic exponents nested too deeply (limit {limits.max_power_tower})",
                    node,
                )
        tower[id(node)] = t
        if isinstance(node, ast.Compare):
            comparisons += len(node.ops)
            if comparisons > limits.max_comparisons:
                raise _fail(f"too many comparisons (limit {limits.max_comparisons})", node)
        if isinstance(node, ast.BinOp) and not has_name[id(node)]:
            constants[id(node)] = _const_value(node, limits)  # refuses values beyond range
        if isinstance(node, ast.BinOp) and _group(node.op) == "mul":
            up = parent.get(id(node))
            if isinstance(up, ast.BinOp) and _group(up.op) == "mul" and up.left is node:
                continue  # not the top of its chain
            factors, cur = 0, node
            while isinstance(cur, ast.BinOp) and _group(cur.op) == "mul":
                factors += has_name[id(cur.right)]
                cur = cur.left
            factors += has_name[id(cur)]
            if factors > limits.max_product_factors:
                raise _fail(
                    f"product of {factors} non-constant factors is too large "
                    f"(limit {limits.max_product_factors})",
                    node,
                )


def _group(op: ast.operator) -> str | None:
    if isinstance(op, (ast.Add, ast.Sub)):
        return "add"
    if isinstance(op, (ast.Mult, ast.Div)):
        return "mul"
    return None


def _const_value(node: ast.AST, limits: Limits) -> float | None:
    """Value of a constant numeric subtree as a float, None if it has names or calls.

    Raises ValueError when the value is beyond ``limits.max_constant``.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return float(_CONSTANTS[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _const_value(node.operand, limits)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _const_value(node.left, limits)
        b = _const_value(node.right, limits)
        if a is None or b is None:
            return None
        try:
            if isinstance(node.op, ast.Pow):
                if a != 0 and abs(b) * math.log10(max(abs(a), 1e-300)) > math.log10(
                    limits.max_constant
                ):
                    raise ValueError
                v = a**b
            else:
                v = (
                    {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op))
                    if not isinstance(node.op, ast.Div)
                    else a / b
                )
        except (OverflowError, ValueError):
            raise _fail("constant too large in loss expression", node) from None
        except ZeroDivisionError:
            raise _fail("division by zero in a constant", node) from None
        if isinstance(v, complex):  # (outside the try: its ValueError is not "too large")
            raise _fail("constant power has a complex value", node)
        if v is None or not math.isfinite(v) or abs(v) > limits.max_constant:
            raise _fail("constant too large in loss expression", node)
        return v
    return None


def _check_power(node: ast.BinOp, limits: Limits) -> None:
    exponent = _const_value(node.right, limits)
    if exponent is not None and abs(exponent) > limits.max_exponent:
        raise _fail(f"exponent {exponent:g} too large (limit {limits.max_exponent:g})", node)
    _const_value(node, limits)  # refuses a constant power whose value is too large


def _to_sympy(node: ast.AST, syms: dict[str, sympy.Symbol]) -> sympy.Basic:
    value = _build(node, syms)
    _check_constant(value, node)
    return value


#: Floats whose binary exponent is beyond this are refused even when tiny: printing
#: (``srepr``) a float whose exponent has thousands of digits takes minutes.
_MAX_BINARY_EXPONENT = 1 << 20


def _check_constant(value: sympy.Basic, node: ast.AST) -> None:
    """Refuse a number this node evaluated to that no float can hold.

    SymPy evaluates functions of numbers in arbitrary range: ``cosh(186201.95)`` is about
    ``1e80866``, ``cosh`` of that has an exponent of 80,000 digits, and one ``srepr`` of
    it then runs for minutes (found by the parser fuzz test). Exact constants
    (``exp(exp(20))``, ``cosh(186202)``) stay symbolic in SymPy but are evaluated the
    same way later. Every node's own number is checked as it is built: a float result,
    the numeric coefficient of a product or sum, and the value of an exact constant.
    Its arguments were checked already, so the first node that leaves float64's range
    is the one refused.
    """
    if isinstance(value, sympy.Float):
        _check_float_range(value, node)
        return
    if not isinstance(value, sympy.Expr):
        return
    if (value.is_Mul or value.is_Add) and isinstance(value.args[0], sympy.Float):
        _check_float_range(value.args[0], node)
    if value.is_Atom or not value.is_number:
        return
    try:
        parts = value.evalf(17).as_real_imag()
    except (ArithmeticError, RecursionError, TypeError, ValueError):
        raise _fail(f"the constant {_text(node)} cannot be evaluated", node) from None
    for part in parts:
        if isinstance(part, sympy.Float):
            _check_float_range(part, node)


def _text(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_float_range(value: sympy.Float, node: ast.AST) -> None:
    """Refuse a float beyond float64's range, or too small to print in bounded time.

    Values below the smallest subnormal but printable are accepted, as before: they are
    0 in every compiled dtype, like a tiny literal.
    """
    sign, man, exp, bc = value._mpf_
    if man:
        magnitude = exp + bc  # 2**(magnitude - 1) <= |value| < 2**magnitude
        if -_MAX_BINARY_EXPONENT <= magnitude <= 1024:
            return
        where = "beyond float64's range" if magnitude > 0 else "too small to represent"
    elif value.is_finite is not False:
        return  # zero
    else:
        where = "beyond float64's range"
    raise _fail(f"the constant {_text(node)} is {where}", node)


def _build(node: ast.AST, syms: dict[str, sympy.Symbol]) -> sympy.Basic:
    if isinstance(node, ast.Constant):
        v = node.value
        # the exact binary value of the Python float (what NumPy and torch compute with)
        return sympy.Integer(v) if isinstance(v, int) else sympy.Float(v)
    if isinstance(node, ast.Name):
        return syms[node.id] if node.id in syms else _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _to_sympy(node.operand, syms)
        if isinstance(node.op, ast.Not):
            return sympy.Not(v)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and _group(node.op) is not None:
        # fold a left-leaning chain iteratively (no recursion per term)
        chain = []
        cur: ast.AST = node
        group = _group(node.op)
        while isinstance(cur, ast.BinOp) and _group(cur.op) == group:
            chain.append((type(cur.op), _to_sympy(cur.right, syms)))
            cur = cur.left
        terms = [_to_sympy(cur, syms)]
        for op, right in reversed(chain):
            terms.append(-right if op is ast.Sub else (1 / right if op is ast.Div else right))
        return sympy.Add(*terms) if group == "add" else sympy.Mul(*terms)
    if isinstance(node, ast.BinOp):
        a = _to_sympy(node.left, syms)
        b = _to_sympy(node.right, syms)
        op = type(node.op)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if op is ast.Div:
            return a / b
        return a**b
    if isinstance(node, ast.Call):
        fn = dsl.FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
        args = [_to_sympy(a, syms) for a in node.args]
        try:
            return fn(*args)
        except TypeError as exc:
            raise _fail(f"bad call of {node.func.id}(): {exc}", node) from None  # type: ignore[attr-defined]
    if isinstance(node, ast.Compare):
        parts = []
        left = _to_sympy(node.left, syms)
        for op, comp in zip(node.ops, node.comparators, strict=False):
            right = _to_sympy(comp, syms)
            parts.append(_COMPARE[type(op)](left, right))
            left = right
        return sympy.And(*parts) if len(parts) > 1 else parts[0]
    if isinstance(node, ast.BoolOp):
        vals = [_to_sympy(v, syms) for v in node.values]
        return sympy.And(*vals) if isinstance(node.op, ast.And) else sympy.Or(*vals)
    raise _fail(f"{type(node).__name__} not allowed in a loss expression", node)


def parse_expression(source: str, *, symbols: Iterable[str], limits: Limits = LIMITS) -> sympy.Expr:
    """Parse a loss expression safely.

    Args:
        source: the text, e.g. ``"(p - y)**2 * (1 + k*y)"``.
        symbols: the names it may use (inputs and params).
        limits: bounds on size, nesting and constants.

    Returns:
        A plain SymPy expression over :func:`customloss.dsl.symbol` symbols.

    Raises:
        ValueError: the text is refused; the message names the construct or symbol.
    """
    if not isinstance(source, str):
        raise TypeError(f"loss source must be a string, got {type(source).__name__}")
    if len(source) > limits.max_length:
        raise ValueError(
            f"loss source too long: {len(source)} characters (limit {limits.max_length})"
        )
    if not source.strip():
        raise ValueError("loss source is empty")
    names = set(symbols)
    try:
        tree = ast.parse(source.strip(), mode="eval")
        _check_tree(tree, names, limits)
        _check_complexity(tree, limits)
        expr = _to_sympy(tree.body, {n: dsl.symbol(n) for n in names})
    except ValueError:
        raise
    except SyntaxError as exc:
        raise ValueError(f"invalid loss expression: {exc.msg} (column {exc.offset})") from None
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise ValueError(f"loss expression too complex to parse ({type(exc).__name__})") from None
    except TypeError as exc:
        raise ValueError(f"invalid loss expression: {exc}") from None
    if not isinstance(expr, sympy.Expr):
        raise ValueError("a loss expression must be arithmetic, not a condition")
    return expr
