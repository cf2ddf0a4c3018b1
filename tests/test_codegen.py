"""The printer table and both runtimes stay in step; generated code is correct."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

from customloss import codegen, dsl, numpy_backend, torch_backend

x, y, k = dsl.symbol("x"), dsl.symbol("y"), dsl.symbol("k")


@pytest.mark.parametrize("op", sorted(set(codegen.FUNCTION_TABLE.values())))
def test_every_table_entry_exists_in_both_runtimes(op):
    assert hasattr(numpy_backend.RUNTIME, op)
    assert hasattr(torch_backend.RUNTIME, op)


@pytest.mark.parametrize(
    "expr",
    [
        sympy.Piecewise((x, x > y), (y * 2, sympy.And(x <= y, y > 0)), (0, True)),
        sympy.Max(x, y, 0.5) - sympy.Min(x, 1),
        sympy.Heaviside(x) * y + sympy.sign(x - y),
        x**3 / (1 + y**2) + sympy.sqrt(x**2 + 1) - 1 / sympy.sqrt(2 + y**2),
        sympy.pi * x + sympy.exp(sympy.Integer(2)) + sympy.Rational(1, 3) * y,
        sympy.Abs(x) ** k,
    ],
    ids=str,
)
def test_generated_kernels_match_sympy_lambdify(expr):
    args = [x, y, k]
    ref = sympy.lambdify(args, expr, "numpy")
    xs = np.linspace(-3, 3, 13)
    ys = np.cos(xs) * 2
    kv = np.full_like(xs, 1.5)
    for runtime, conv in (
        (numpy_backend.RUNTIME, np.asarray),
        (torch_backend.RUNTIME, torch.from_numpy),
    ):
        kern = codegen.generate_kernel("t", args, [("v", expr)], runtime, shape_args=[x, y])
        (out,) = kern.fn(conv(xs), conv(ys), conv(kv))
        np.testing.assert_allclose(np.asarray(out), ref(xs, ys, kv), rtol=1e-12)


def test_constant_output_is_broadcast_to_the_input_shape():
    kern = codegen.generate_kernel(
        "c", [x, y], [("v", sympy.Integer(3))], numpy_backend.RUNTIME, shape_args=[x, y]
    )
    (out,) = kern.fn(np.zeros((2, 3)), np.zeros((2, 3)))
    assert out.shape == (2, 3) and (out == 3).all()


def test_common_subexpressions_are_shared():
    e = sympy.log(1 + x**2 * y**2) + sympy.log(1 + x**2 * y**2) ** 2
    kern = codegen.generate_kernel(
        "cse", [x, y], [("v", e), ("d", sympy.diff(e, x))], numpy_backend.RUNTIME
    )
    assert kern.source.count("R.log1p(") + kern.source.count("R.log(") == 1


def test_safe_power_keeps_zero_base_finite():
    R = numpy_backend.RUNTIME
    b = np.array([0.0, 1e-320, 0.5])
    out = R.spow(b, np.array(-0.5))
    assert np.isfinite(out).all()
    assert out[2] == pytest.approx(0.5**-0.5)
    assert R.spow(np.array([0.0]), np.array(2.0))[0] == 0.0
    t = torch_backend.RUNTIME.spow(torch.tensor([0.0, 0.25]), torch.tensor(-0.5))
    assert torch.isfinite(t).all() and t[1].item() == pytest.approx(2.0)


def test_unknown_function_is_named():
    f = sympy.Function("mystery")
    with pytest.raises(ValueError, match="no compiled form for the function 'mystery'"):
        codegen.generate_kernel("u", [x], [("v", f(x))], numpy_backend.RUNTIME)


def test_constants_are_folded_to_floats():
    kern = codegen.generate_kernel("k", [x], [("v", x * sympy.log(2))], numpy_backend.RUNTIME)
    assert repr(math.log(2)) in kern.source
