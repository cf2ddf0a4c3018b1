#!/usr/bin/env python
"""Where the time goes: operation counts of the generated Torch kernels.

For every benchmark loss, counts in ``loss.source()`` the runtime calls (``R.exp``,
``R.sigmoid``, ...), how many of them are transcendental (each costs 10-40 cycles per
element even vectorised), and the arithmetic operators.  In the eager kernel every
call and operator is one pass over memory; compiled, Inductor fuses them into one
loop and the transcendental count decides the time.

Usage::

    python benchmarks/opcount.py
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Runtime op -> transcendental function evaluations per element it costs.
TRANSCENDENTAL = {
    "exp": 1,
    "log": 1,
    "log1p": 1,
    "expm1": 1,
    "sigmoid": 1,  # exp + a division
    "softplus": 2,  # exp + log1p
    "spow": 2,  # pow with a symbolic exponent: exp(e * log(b))
    "tanh": 1,
    "logcosh": 2,
    "logsumexp": 2,
    "erf": 1,
    "sqrt": 0,
}


def count(source: str) -> dict[str, Counter]:
    """Per generated function: runtime calls and arithmetic operators."""
    out: dict[str, Counter] = {}
    for fn in ast.parse(source).body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        c: Counter = Counter()
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "R"
            ):
                c[f"R.{node.func.attr}"] += 1
                c["transcendental"] += TRANSCENDENTAL.get(node.func.attr, 0)
            elif isinstance(node, ast.BinOp) or (
                isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            ):
                c["arithmetic"] += 1
        key = fn.name
        while key in out:
            key += "'"
        out[key] = c
    return out


def main() -> int:
    from run import DSL

    print(
        "| loss | kernel | transcendental evaluations / element | runtime calls | arithmetic ops |"
    )
    print("|---|---|---|---|---|")
    for name, loss in DSL.items():
        source = loss.source()
        for i, c in enumerate(count(source).values()):
            kind = "value" if i == 0 else "value + d/d" + loss.inputs[0]
            calls = ", ".join(f"{k[2:]}x{v}" for k, v in sorted(c.items()) if k.startswith("R."))
            print(f"| {name} | {kind} | {c['transcendental']} | {calls} | {c['arithmetic']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
