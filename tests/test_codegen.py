"""The printer table and both runtimes stay in step; generated code is correct."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

import customloss as cl
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


# ---------------------------------------------------------------------------
# 0 * inf where a polynomial factor is exactly 0 and a square overflowed
# ---------------------------------------------------------------------------
def _wsq():
    return cl.define(
        "wsq_guard", "(1 + (w - 1)*y) * (p - y)**2", inputs=("p", "y"), params={"w": 3.0}
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vanishing_factor_times_overflowed_square_is_zero(backend):
    # float32, p = 1e30: (p - y)**2 overflows. True values (closed form):
    # value at w = 0, y = 1: (1 + (0 - 1)*1) * x**2 = 0; d/dw at y = 0: y * x**2 = 0
    loss = _wsq()
    p = np.array([1e30, -1e30, 1e30], dtype=np.float32)
    y = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    if backend == "numpy":
        v = loss(p, y, reduction="none", w=0.0)
        dw = loss.gradient(p, y, wrt="w", reduction="none", w=0.0)
    else:
        pt, yt = torch.from_numpy(p), torch.from_numpy(y)
        w = torch.tensor(0.0, requires_grad=True)
        vt = loss(pt, yt, reduction="none", w=w)
        v = vt.detach().numpy()
        # (element 0's d/dw is truly 1e60: inf; autograd's 0 * inf when selecting from
        # it would be nan, so the gradient is taken of element 1 alone)
        (dwt,) = torch.autograd.grad(loss(pt[1:2], yt[1:2], reduction="sum", w=w), w)
        dw = np.array([np.nan, float(dwt), np.nan])
    assert v[0] == 0.0  # the true value; 0 * inf = nan before the guard
    assert np.isinf(v[1]) and np.isinf(v[2])  # (1 - y) x**2 = 1e60: beyond float32
    assert dw[1] == 0.0


def test_guard_keeps_nan_and_second_derivatives():
    loss = _wsq()
    # NaN in the overflowing factor still propagates
    v = loss(
        np.array([np.nan], dtype=np.float32),
        np.array([0.0], dtype=np.float32),
        reduction="none",
        w=0.0,
    )
    assert np.isnan(v[0])
    # d2/(dw dy) of (1 + (w-1) y) x**2 at y = 0 (the factor is exactly 0 there) is
    # x**2 - 2 (w-1)... by hand: d/dw = y x**2, d/dy of that = x**2 - 2 y x = x**2
    p = torch.tensor([0.7, -1.3], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    out = loss(p, y, reduction="sum", w=w)
    (dw,) = torch.autograd.grad(out, w, create_graph=True)
    (dwdy,) = torch.autograd.grad(dw, y)
    torch.testing.assert_close(dwdy, (p - 0.0) ** 2)


def test_guard_leaves_plain_squares_alone():
    mse = cl.define("mse_guard", "(p - y)**2", inputs=("p", "y"))
    assert "zero_times" not in mse.source()
    assert "zero_times" in _wsq().source()


def test_guard_leaves_products_of_several_vanishing_factors():
    # k*y underflows to 0 in float32 (1e-30 * 1e-20) while the true value,
    # 1e-50 * (1e25)**2 = 1, is finite: nan reports that; a guarded 0 would hide it
    loss = cl.define("kyx_guard", "k*y*(p - y)**2", inputs=("p", "y"), params={"k": 1e-30})
    assert "zero_times" not in loss.source()
    v = loss(
        np.array([1e25], dtype=np.float32), np.array([1e-20], dtype=np.float32), reduction="none"
    )
    assert np.isnan(v[0])
    exact = 1e-30 * 1e-20 * (1e25 - 1e-20) ** 2
    v64 = loss(np.array([1e25]), np.array([1e-20]), reduction="none")
    np.testing.assert_allclose(v64, exact, rtol=1e-12)


def test_an_undefined_derivative_is_refused_with_its_name():
    # d/dp 0.0**p = 0.0**p * log(0.0) is nan: the kernel would hold a nan constant
    loss = cl.define("zero_pow", "0.0**p", inputs=("p", "y"))
    with pytest.raises(ValueError, match=r"'d_p'.*constant nan.*no finite value"):
        loss.source("numpy")
    assert float(loss(2.0, 0.0)) == 0.0  # the value itself is fine
