"""Torch backend: values against torch.nn.functional, autograd against gradcheck,
stability at extreme logits, dtypes, devices and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import customloss as cl
from customloss import dsl

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOGITS = [-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4]

NAIVE_BCE = cl.define(
    "naive_bce", "-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x)))", inputs=("x", "y")
)
MSE = cl.define("mse_t", "(p - y)**2", inputs=("p", "y"))
FOCAL = cl.define(
    "focal_t",
    "(a*y + (1-a)*(1-y)) * -(y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x)))"
    " * (1 - (sigmoid(x)*y + (1-sigmoid(x))*(1-y)))**g",
    inputs=("x", "y"),
    params={"a": 0.25, "g": 2.0},
)


@cl.loss(params={"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05})
def asl(x, y, gamma_pos, gamma_neg, clip):
    p = cl.sigmoid(x)
    p_m = cl.maximum(p - clip, 0)
    return -(y * (1 - p) ** gamma_pos * cl.log(p) + (1 - y) * p_m**gamma_neg * cl.log(1 - p_m))


def torchvision_focal(x, y, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss's formula, reduction='none'."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    return (alpha * y + (1 - alpha) * (1 - y)) * loss


def reference_asl(x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """Ridnik et al. 2021, eq. for L+ / L- (official formula, elementwise)."""
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    lpos = y * (1 - p) ** gamma_pos * torch.log(p)
    lneg = (1 - y) * p_m**gamma_neg * torch.log(1 - p_m)
    return -(lpos + lneg)


# --- the acceptance table ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_naive_bce_equals_bce_with_logits_at_extreme_logits(dtype, device):
    x = torch.tensor(LOGITS, dtype=dtype, device=device).repeat(3)
    y = torch.tensor([0.0] * 9 + [1.0] * 9 + [0.3] * 9, dtype=dtype, device=device)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    ours = NAIVE_BCE(x1, y, reduction="none")
    ref = F.binary_cross_entropy_with_logits(x2, y, reduction="none")
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_naive_lambdify_really_fails_there():
    """The reason for the rewrite pass: plain lambdify gives inf/nan."""
    import sympy

    f = sympy.lambdify(
        sorted(NAIVE_BCE.expr.free_symbols, key=lambda s: s.name), NAIVE_BCE.expr, "numpy"
    )
    with np.errstate(all="ignore"):
        vals = f(np.array(LOGITS, dtype=np.float32), np.full(9, 0.3, dtype=np.float32))
    assert not np.isfinite(vals).all()


# --- reference values ----------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_equals_f_mse_loss(reduction):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, dtype=torch.float64)
    x2 = x.detach().clone().requires_grad_(True)
    ours = MSE(x, y, reduction=reduction)
    ref = F.mse_loss(x2, y, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
def test_focal_matches_torchvision_formula_and_stays_finite(gamma):
    x = torch.tensor(LOGITS + [-3.0, -1.0, 2.0, 12.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0] * 6 + [1.0], dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    ours = FOCAL(x1, y, g=gamma, reduction="none")
    ours.sum().backward()
    assert torch.isfinite(ours).all() and torch.isfinite(x1.grad).all()
    moderate = x.abs() <= 30
    x2 = x[moderate].clone().requires_grad_(True)
    ref = torchvision_focal(x2, y[moderate], gamma=gamma)
    ref.sum().backward()
    torch.testing.assert_close(ours[moderate], ref.detach())
    torch.testing.assert_close(x1.grad[moderate], x2.grad)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_gradient_reaches_analytic_limit_when_confident(gamma, dtype):
    """At p_t -> 1 the focal gradient tends to 0 for every gamma >= 0."""
    x = torch.tensor([40.0, 100.0, 1e4, -40.0, -100.0, -1e4], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype)
    FOCAL(x, y, g=gamma, reduction="sum").backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() < 1e-12


@pytest.mark.parametrize("gamma_neg", [4.0, 0.5, 0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_asymmetric_loss_trap_below_clip(gamma_neg, dtype):
    """The naive derivative of max(p - clip, 0)**g gives 0/0 below the clip."""
    x = torch.linspace(-20, 8, 57, dtype=dtype)
    y = (torch.arange(57) % 3 == 0).to(dtype)
    x1 = x.clone().requires_grad_(True)
    ours = asl(x1, y, gamma_neg=gamma_neg, reduction="none")
    ours.sum().backward()
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(ours, reference_asl(x, y, gamma_neg=gamma_neg))
    # reference gradient where the clip is not active at exactly 0 (autograd is fine there)
    x2 = x.clone().requires_grad_(True)
    ref = reference_asl(x2, y, gamma_neg=gamma_neg)
    ref.sum().backward()
    active = torch.sigmoid(x) > 0.05
    torch.testing.assert_close(x1.grad[active], x2.grad[active])
    below = (~active) & (y == 0)
    assert (x1.grad[below] == 0).all()  # p_m is constant 0 there


# --- autograd ------------------------------------------------------------------
def test_gradcheck_and_gradgradcheck_all_arguments():
    torch.manual_seed(0)
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    y = torch.rand(7, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    a = torch.full((7,), 0.3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, dtype=torch.float64, requires_grad=True)
    for red in ("mean", "sum", "none"):
        fn = lambda x, y, g, a, w, red=red: FOCAL(x, y, g=g, a=a, weight=w, reduction=red)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, g, a, w))
        assert torch.autograd.gradgradcheck(fn, (x, y, g, a, w))


def test_broadcast_param_gradient_is_summed():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, 3, dtype=torch.float64)
    k = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    loss = cl.define("kw", "k * (p - y)**2", inputs=("p", "y"), params={"k": 1.0})
    assert torch.autograd.gradcheck(lambda x, k: loss(x, y, k=k), (x, k))
    v = loss(x, y, k=k)
    v.backward()
    ref = ((x.detach() - y) ** 2).mean(0) * 5 / 15
    torch.testing.assert_close(k.grad, ref)


def test_fused_forward_gradient_equals_recomputed_one():
    x = torch.randn(50, dtype=torch.float64)
    y = torch.rand(50, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    FOCAL(x1, y).backward()  # only the input needs grad: fused path
    x2 = x.clone().requires_grad_(True)
    y2 = y.clone().requires_grad_(True)
    FOCAL(x2, y2).backward()  # target needs grad too: recompute path
    torch.testing.assert_close(x1.grad, x2.grad)


def test_second_order_through_create_graph():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, dtype=torch.float64)
    (g,) = torch.autograd.grad(NAIVE_BCE(x, y, reduction="sum"), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(g.detach(), s - y)
    torch.testing.assert_close(h, s * (1 - s))


# --- weights, reductions, dtypes, devices ------------------------------------------
def test_weight_semantics():
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64)
    l_el = (x - y) ** 2
    torch.testing.assert_close(MSE(x, y, weight=w), (w * l_el).mean())
    torch.testing.assert_close(MSE(x, y, weight=w, reduction="sum"), (w * l_el).sum())
    torch.testing.assert_close(MSE(x, y, weight=w, reduction="none"), w * l_el)
    with pytest.raises(ValueError, match=r"weight has shape \(4,\)"):
        MSE(x, y, weight=torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_follow_the_input(dtype, device):
    torch.manual_seed(1)
    x64 = torch.randn(64, dtype=torch.float64) * 4
    y64 = (torch.rand(64) > 0.5).double()
    x = x64.to(device=device, dtype=dtype).requires_grad_(True)
    y = y64.to(device=device, dtype=dtype)
    v = FOCAL(x, y, reduction="none")
    v.sum().backward()
    assert v.dtype == dtype and x.grad.dtype == dtype and v.device.type == device
    xr = x.detach().double().cpu().requires_grad_(True)
    ref = torchvision_focal(xr, y.double().cpu())
    ref.sum().backward()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-10}[
        dtype
    ]
    torch.testing.assert_close(v.double().cpu(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, rtol=tol, atol=tol)


def test_nan_input_propagates_nan():
    x = torch.tensor([0.5, float("nan")], requires_grad=True)
    v = NAIVE_BCE(x, torch.tensor([1.0, 1.0]), reduction="none")
    assert torch.isnan(v[1]) and not torch.isnan(v[0])


def test_empty_and_scalar_inputs():
    e = MSE(torch.empty(0), torch.empty(0), reduction="sum")
    assert e.item() == 0.0
    s = MSE(torch.tensor(3.0), torch.tensor(1.0))
    assert s.shape == () and s.item() == 4.0


# --- errors --------------------------------------------------------------------------
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"input shape \(4, 1\) and target shape \(4,\)"):
        MSE(torch.zeros(4, 1), torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_or_bool_prediction_is_refused(dtype):
    with pytest.raises(TypeError, match="floating-point"):
        MSE(torch.zeros(3, dtype=dtype), torch.zeros(3))


def test_target_on_another_device_is_named():
    with pytest.raises(ValueError, match="target is on device meta but input is on cpu"):
        MSE(torch.zeros(3), torch.zeros(3, device="meta"))


def test_param_that_would_enlarge_the_output_is_refused():
    with pytest.raises(ValueError, match=r"param 'a' has shape \(2, 3\)"):
        FOCAL(torch.zeros(3), torch.zeros(3), a=torch.ones(2, 3))


def test_errors_raised_before_any_work(monkeypatch):
    from customloss import torch_backend

    def boom(*a, **k):
        raise AssertionError("computation started")

    monkeypatch.setattr(torch_backend.LossFunction, "apply", boom)
    with pytest.raises(TypeError, match="unknown param"):
        FOCAL(torch.zeros(3), torch.zeros(3), b=1.0)
    with pytest.raises(ValueError, match="reduction"):
        FOCAL(torch.zeros(3), torch.zeros(3), reduction="max")
    with pytest.raises(ValueError, match="same shape"):
        FOCAL(torch.zeros(3), torch.zeros(2))


# --- the nn.Module ----------------------------------------------------------------------
def test_module_buffers_and_overrides():
    crit = FOCAL.torch(g=1.0)
    assert isinstance(crit, torch.nn.Module)
    assert set(dict(crit.named_buffers())) == {"a", "g"}
    assert crit.g.item() == 1.0
    x = torch.randn(10, dtype=torch.float64)
    y = (torch.rand(10) > 0.5).double()
    torch.testing.assert_close(crit(x, y), torchvision_focal(x, y, gamma=1.0).mean())
    torch.testing.assert_close(crit(x, y, g=3.0), torchvision_focal(x, y, gamma=3.0).mean())
    sd = crit.state_dict()
    assert set(sd) == {"a", "g"}
    with pytest.raises(TypeError, match="unknown param 'q'"):
        FOCAL.torch(q=1.0)
    none = FOCAL.torch(reduction="none")
    assert none(x, y).shape == (10,)


# --- NumPy == Torch, property-based ---------------------------------------------------
floats = st.floats(-50, 50, allow_nan=False, width=64)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float64, st.integers(1, 20), elements=floats),
    g=st.floats(0, 5),
    a=st.floats(0, 1),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_numpy_equals_torch(x, g, a, reduction):
    y = (np.arange(x.size) % 2).astype(np.float64)
    n = FOCAL(x, y, g=g, a=a, reduction=reduction)
    t = FOCAL(torch.from_numpy(x), torch.from_numpy(y), g=g, a=a, reduction=reduction)
    np.testing.assert_allclose(np.asarray(n), t.numpy(), rtol=1e-10, atol=1e-300)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    FOCAL(xt, torch.from_numpy(y), g=g, a=a, reduction="sum").backward()
    np.testing.assert_allclose(
        FOCAL.gradient(x, y, g=g, a=a, reduction="sum"), xt.grad.numpy(), rtol=1e-9, atol=1e-300
    )


# ---------------------------------------------------------------------------
# the in-place backward never writes into the caller's tensors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "src, grad",
    [
        ("p*y", lambda p, y: y),  # d/dp is the target itself
        ("p**2/2 - y", lambda p, y: p),  # d/dp is the input itself
        ("exp(p) - y", lambda p, y: torch.exp(p)),  # value and d/dp are one buffer
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_leaves_inputs_targets_and_outputs_alone(src, grad, reduction):
    loss = cl.define("alias_" + str(abs(hash(src))), src, inputs=("p", "y"))
    p0 = torch.randn(6, dtype=torch.float64)
    y0 = torch.randn(6, dtype=torch.float64)
    p, y = p0.clone().requires_grad_(), y0.clone()
    out = loss(p, y, reduction=reduction)
    out_before = out.detach().clone()
    out.sum().backward()
    assert torch.equal(p.detach(), p0) and torch.equal(y, y0)
    assert torch.equal(out.detach(), out_before)
    scale = 1 / 6 if reduction == "mean" else 1.0
    torch.testing.assert_close(p.grad, grad(p0, y0) * scale)


def test_class_backward_leaves_inputs_targets_and_params_alone():
    half_sq = cl.define("alias_half_sq", "csum(z**2)/2", inputs=("z", "y"), classes=True)
    lin = cl.define(
        "alias_lin",
        "csum(alpha*z) + 0*csum(y)",
        inputs=("z", "y"),
        params={"alpha": None},
        classes=True,
    )
    z0 = torch.randn(3, 4, dtype=torch.float64)
    z = z0.clone().requires_grad_()
    half_sq(z, torch.tensor([0, 1, 2]), reduction="mean").backward()
    assert torch.equal(z.detach(), z0)
    torch.testing.assert_close(z.grad, z0 / 3)  # d/dz of mean_n sum_c z^2/2
    alpha = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    z = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    lin(z, torch.tensor([0]), alpha=alpha, reduction="none").backward(
        torch.tensor([0.5], dtype=torch.float64)
    )
    assert alpha.tolist() == [1.0, 2.0, 3.0, 4.0]
    torch.testing.assert_close(z.grad, 0.5 * alpha[None])


# ---------------------------------------------------------------------------
# reduction="mean": gradients for any incoming gradient, also on a second backward
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("gout", [1.0, 2.5, 0.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_mean_gradient_equals_autograd_for_any_incoming_gradient(gout, dtype):
    loss = cl.define("fold_mean", "(p - y)**2*(1 + k*y)", inputs=("p", "y"), params={"k": 0.5})
    p0 = torch.randn(7, dtype=torch.float64).to(dtype)
    y = torch.rand(7, dtype=torch.float64).to(dtype)
    g = torch.tensor(gout, dtype=dtype)
    p = p0.clone().requires_grad_()
    out = loss(p, y, reduction="mean")
    out.backward(g, retain_graph=True)
    first = p.grad.clone()
    out.backward(g)  # a second backward recomputes from the saved inputs
    ref_p = p0.double().requires_grad_()
    yd = y.double()
    ref = ((ref_p - yd) ** 2 * (1 + 0.5 * yd)).mean()
    ref.backward(g.double())
    # (compared in float64: the tolerance is the computing dtype's, whose rounding of
    # the sum is what differs; float64's default was flaky for float32 results)
    tol = {
        torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2},
        torch.float32: {"atol": 1e-5, "rtol": 1.3e-6},
    }.get(dtype, {})
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(first.double(), ref_p.grad, **tol)
    torch.testing.assert_close(p.grad.double(), 2 * ref_p.grad, **tol)
    assert p.grad.dtype == dtype and torch.equal(p.detach(), p0)


# --------------------------------------------------------------------------- review findings


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logsumexp_with_a_constant_term(dtype: torch.dtype) -> None:
    # log(1 + exp(p) + exp(2p)) is generated as R.logsumexp(0, p, 2*p): the constant
    # used to reach torch.broadcast_tensors as a Python int (TypeError)
    loss = cl.define("lse3", "log(1 + exp(p) + exp(2*p))", inputs=("p", "y"))
    x = torch.tensor([0.5, 1.0, -300.0, 300.0], dtype=dtype, requires_grad=True)
    out = loss(x, torch.zeros(4, dtype=dtype), reduction="none")
    out.sum().backward()
    xr = x.detach().double().requires_grad_()
    ref = torch.logsumexp(torch.stack([torch.zeros_like(xr), xr, 2 * xr]), 0)
    ref.sum().backward()
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, **tol)
    np.testing.assert_allclose(loss(x.detach().double().numpy(), np.zeros(4)), ref.mean().item())


@pytest.mark.parametrize("step", ["Heaviside", "sign", "floor", "ceiling"])
def test_step_functions_differentiate_to_zero_almost_everywhere(step: str) -> None:
    # SymPy gives DiracDelta (Heaviside, sign) or an unevaluated Derivative (floor,
    # ceiling); the kernels use 0 there, as torch's autograd of the same steps
    f = getattr(sympy, step)
    p, y = dsl.symbol("p"), dsl.symbol("y")
    loss = cl.Loss(f"step_{step}", (y - p) * (sympy.Rational(1, 5) - f(p - y)), inputs=("p", "y"))
    x = torch.tensor([0.3, 1.7, -2.2], dtype=torch.float64, requires_grad=True)
    t = torch.ones(3, dtype=torch.float64)
    loss(x, t, reduction="sum").backward()
    steps = {
        "Heaviside": lambda u: torch.heaviside(u, torch.tensor(0.5, dtype=u.dtype)),
        "sign": torch.sign,
        "floor": torch.floor,
        "ceiling": torch.ceil,
    }
    xr = x.detach().clone().requires_grad_()
    u = (xr - t).detach()  # torch.heaviside has no derivative: the step as a constant
    ((t - xr) * (0.2 - steps[step](u))).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_functions_without_compiled_form_are_refused_when_defined() -> None:
    p, y = dsl.symbol("p"), dsl.symbol("y")
    for f in (sympy.loggamma, sympy.asinh, sympy.Function("g")):
        with pytest.raises(ValueError, match=f"no compiled form for the function '{f.__name__}'"):
            cl.Loss("bad", f(p) * y, inputs=("p", "y"))


def test_results_never_alias_the_caller_s_arrays() -> None:
    # d(p*y)/dp = y and the loss "y" returned the argument itself
    lin = cl.define("lin", "p*y", inputs=("p", "y"))
    p, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    g = lin.gradient(p, y, reduction="sum")
    g *= 0.1
    np.testing.assert_array_equal(y, [3.0, 4.0])
    ident = cl.define("ident", "y", inputs=("p", "y"))
    t = torch.tensor([1.0, 2.0])
    out = ident(torch.zeros(2, requires_grad=True), t, reduction="none")
    with torch.no_grad():
        out += 1
    torch.testing.assert_close(t, torch.tensor([1.0, 2.0]))
    tn = np.array([1.0, 2.0])
    ident(np.zeros(2), tn, reduction="none")[...] += 1
    np.testing.assert_array_equal(tn, [1.0, 2.0])


def test_module_params_stay_float64_when_a_parent_model_is_cast() -> None:
    crit = cl.define("lb", "(p - beta*y)**2", inputs=("p", "y"), params={"beta": 0.999}).torch()
    model = torch.nn.ModuleDict({"net": torch.nn.Linear(1, 1), "crit": crit}).to(torch.bfloat16)
    assert model["net"].weight.dtype == torch.bfloat16  # the rest is cast
    assert crit.beta.dtype == torch.float64 and crit.beta.item() == 0.999
    # (1 - 0.999)**2 in float32; with beta rounded to bfloat16 (1.0) it was 0
    assert crit(torch.ones(1), torch.ones(1)).item() == pytest.approx(1e-6, rel=1e-3)


def test_a_param_on_another_device_is_refused_by_name() -> None:
    loss = cl.define("pw", "w*(p - y)**2", inputs=("p", "y"), params={"w": 1.0})
    x, y = torch.randn(3), torch.randn(3)
    with pytest.raises(ValueError, match="param 'w' is on device meta but input is on cpu"):
        loss(x, y, w=torch.ones(3, device="meta"))
    with pytest.raises(TypeError, match=r"input must be a torch.Tensor \(another argument is one"):
        loss(x.numpy(), y)


# --------------------------------------------------------------------------- p_t forms

BCE_PT = "-log(y*sigmoid(p) + (1 - y)*(1 - sigmoid(p)))"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_p_t_form_of_bce_is_stable_at_extreme_logits(dtype: torch.dtype) -> None:
    # log of a sum of sigmoids underflowed to log(0) = inf past |x| ~ 104 (float32)
    loss = cl.define("bce_pt", BCE_PT, inputs=("p", "y"))
    x = torch.tensor([-1e4, -200.0, -3.0, 0.5, 3.0, 200.0, 1e4] * 2, dtype=dtype)
    y = torch.tensor([1.0] * 7 + [0.0] * 7, dtype=dtype)
    xr = x.clone().requires_grad_()
    out = loss(xr, y, reduction="none")
    out.sum().backward()
    xt = x.clone().requires_grad_()
    ref = F.binary_cross_entropy_with_logits(xt, y, reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(xr.grad, xt.grad)
    np.testing.assert_allclose(
        loss(x.double().numpy(), y.double().numpy(), reduction="none"),
        ref.detach().double(),
        rtol=1e-6,
        atol=1e-30,
    )


def test_the_p_t_form_of_focal_loss_matches_torchvision() -> None:
    # torchvision.ops.sigmoid_focal_loss (alpha = -1), written out in float64
    loss = cl.define(
        "focal_pt",
        "-(1 - (y*sigmoid(p) + (1 - y)*(1 - sigmoid(p))))**g"
        " * log(y*sigmoid(p) + (1 - y)*(1 - sigmoid(p)))",
        inputs=("p", "y"),
        params={"g": 2.0},
    )
    g = torch.Generator().manual_seed(4)
    x = torch.cat(
        [torch.randn(50, generator=g, dtype=torch.float64) * 4, torch.tensor([-60.0, 60.0])]
    )
    y = torch.cat(
        [torch.rand(50, generator=g, dtype=torch.float64).round(), torch.ones(2)]
    ).double()
    gamma = torch.tensor(2.0, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, gamma)]
    loss(args[0], y, g=args[1], reduction="sum").backward()
    ref_args = [t.clone().requires_grad_() for t in (x, gamma)]
    p = torch.sigmoid(ref_args[0])
    p_t = p * y + (1 - p) * (1 - y)
    ce = F.binary_cross_entropy_with_logits(ref_args[0], y, reduction="none")
    (ce * (1 - p_t) ** ref_args[1]).sum().backward()
    for a, r in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad, r.grad)


def test_the_p_t_form_has_second_derivatives_at_hard_targets() -> None:
    # the stable form must not divide by the coefficient y (or 1 - y) in autograd
    loss = cl.define("bce_pt2", BCE_PT, inputs=("p", "y"))
    x = torch.tensor([-3.0, -0.5, 0.2, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    for value in (0.0, 0.3, 1.0):
        y = torch.full((5,), value, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(
            lambda a, b: loss(a, b, reduction="none"), (x, y), eps=1e-6, atol=1e-6
        )


def test_the_p_t_form_outside_the_target_domain_is_the_plain_formula() -> None:
    # the rewrite holds for 0 <= y <= 1; elsewhere the formula is computed as written
    loss = cl.define("bce_pt3", BCE_PT, inputs=("p", "y"))
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    y = torch.tensor([2.0, -0.5], dtype=torch.float64)
    s = torch.sigmoid(x)
    torch.testing.assert_close(loss(x, y, reduction="none"), -torch.log(y * s + (1 - y) * (1 - s)))
    np.testing.assert_allclose(
        loss(x.numpy(), y.numpy(), reduction="none"), -torch.log(y * s + (1 - y) * (1 - s))
    )
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(xr, y, reduction="sum"), xr)
    xn = x.clone().requires_grad_()
    sn = torch.sigmoid(xn)
    (gn,) = torch.autograd.grad(-torch.log(y * sn + (1 - y) * (1 - sn)).sum(), xn)
    torch.testing.assert_close(g, gn)


def test_a_p_t_mixture_with_number_coefficients_keeps_float64() -> None:
    # torch.where on two Python numbers makes a float32 tensor: 2.6e-8 off in float64
    loss = cl.define("ls", "-log(0.9*sigmoid(x) + 0.1*sigmoid(-x))", inputs=("x", "y"))
    x = torch.tensor([2.0, -3.0, 40.0], dtype=torch.float64, requires_grad=True)
    y = torch.zeros(3, dtype=torch.float64)
    loss(x, y, reduction="sum").backward()
    xr = x.detach().clone().requires_grad_()
    s = torch.sigmoid(xr)
    ref = -torch.log(0.9 * s + 0.1 * (1 - s))
    ref.sum().backward()
    torch.testing.assert_close(
        loss(x.detach(), y, reduction="none"), ref.detach(), rtol=1e-15, atol=0
    )
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize(
    "text",
    ["y*sigmoid(3) + x", "x + log(1 + exp(2))", "-log(y*sigmoid(2) + (1 - y)*sigmoid(-2)) + x"],
)
def test_sigmoid_and_softplus_of_a_constant_in_torch(text: str) -> None:
    # the fast forward lowered sigmoid(3) to R.exp(-R.abs(3)) on a Python int
    loss = cl.define("const", text, inputs=("x", "y"))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, dtype=torch.float64, generator=g)
    y = torch.rand(5, dtype=torch.float64, generator=g)
    s2, s3 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-3))
    want = {
        "y*sigmoid(3) + x": y * s3 + x,
        "x + log(1 + exp(2))": x + math.log1p(math.exp(2)),
        "-log(y*sigmoid(2) + (1 - y)*sigmoid(-2)) + x": -torch.log(y * s2 + (1 - y) * (1 - s2)) + x,
    }[text]
    torch.testing.assert_close(loss(x, y, reduction="none"), want)
    np.testing.assert_allclose(
        loss(x.numpy(), y.numpy(), reduction="none"), want.numpy(), rtol=1e-14
    )


def test_a_general_sigmoid_mixture_is_stable_with_second_derivatives() -> None:
    # not the p_t pair: the guarded LogMix (logsumexp of log c_k - softplus(-v_k))
    loss = cl.define("mix", "-log(y*sigmoid(x) + (1 - y)*sigmoid(2*x))", inputs=("x", "y"))
    x = torch.tensor([-3.0, -0.5, 0.2, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.3, 0.0, 1.0, 0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, b: loss(a, b, reduction="none"), (x, y), eps=1e-6, atol=1e-6
    )
    far = torch.tensor([-200.0, -1e4], requires_grad=True)  # the plain sum underflows
    target = torch.tensor([0.5, 1.0])
    out = loss(far, target, reduction="none")
    out.sum().backward()
    # -log(y sigmoid(x) + (1-y) sigmoid(2x)) -> -log(y) - x and slope -1 as x -> -inf
    torch.testing.assert_close(out, -torch.log(target) - far.detach())
    torch.testing.assert_close(far.grad, torch.tensor([-1.0, -1.0]))


# -- another device without a GPU: the meta device ------------------------------------
# No GPU was lent to this project's sessions. Tensors on the "meta" device carry shapes,
# dtypes and the device but no data, and torch refuses to mix them with CPU tensors of one
# dimension or more, exactly as it refuses CPU/CUDA mixes. So a forward and backward on
# meta tensors proves that no kernel, backward or module builds a CPU tensor where the
# caller's device is meant (what would fail on CUDA). Values are not checked here (there
# are none); class-index targets are validated by reading them (one synchronisation, as
# torch's device-side assert), which has nothing to read on meta and is skipped there.
_DEVICE_PROBES = {
    # user-written losses reaching the runtime's other branches
    "constant_grad": cl.define("dev_lin", "3*x - y", inputs=("x", "y")),
    "class_constant_grad": cl.define(
        "dev_csum", "csum(z) - csum(y*z)", inputs=("z", "y"), classes=True
    ),
    "specialised_where": cl.define(
        "dev_where", "where(k > 0, (x - y)**2, abs(x - y))", inputs=("x", "y"), params={"k": 1.0}
    ),
    "margin_onehot": cl.get("ldam"),
}


def _device_cases() -> list[tuple[str, str]]:
    names = [*cl.names(), *_DEVICE_PROBES]
    loss = {n: _DEVICE_PROBES.get(n) or cl.get(n) for n in names}
    return [(n, "probability") for n in names] + [(n, "index") for n in names if loss[n].classes]


@pytest.mark.parametrize(("name", "targets"), _device_cases())
def test_every_registered_loss_stays_on_the_inputs_device(name, targets, monkeypatch):
    monkeypatch.setenv("CUSTOMLOSS_COMPILE", "0")
    dev, n, c = torch.device("meta"), 8, 5
    loss = _DEVICE_PROBES[name] if name in _DEVICE_PROBES else cl.get(name)
    # (the weighted mean's denominator has no param gradient with index targets)
    imw = loss.index_mean_weight if targets == "index" else None
    fixed = {s.name for s in imw.free_symbols} if imw is not None else set()
    if loss.classes:
        x = torch.empty(n, c, device=dev, requires_grad=True)
        y = torch.empty(n, c, device=dev)
        if targets == "index":
            y = torch.empty(n, device=dev, dtype=torch.long)
    else:
        x = torch.empty(n, device=dev, requires_grad=True)
        y = torch.empty(n, device=dev, requires_grad=True)
    params = {
        k: torch.empty(c, device=dev, requires_grad=k not in fixed)
        if v is None or (loss.classes and k in loss.per_class)
        else torch.empty((), device=dev, requires_grad=k not in fixed)
        for k, v in loss.params.items()
    }
    for reduction in ("mean", "sum", "none"):
        out = loss(x, y, reduction=reduction, weight=torch.empty(n, device=dev), **params)
        assert out.device == dev
        out.sum().backward()
    leaves = [x, *(p for p in params.values() if p.requires_grad)] + (
        [y] if y.requires_grad else []
    )
    assert all(t.grad is not None and t.grad.device == dev for t in leaves)
    required = {k: torch.empty(c, device=dev) for k, v in loss.params.items() if v is None}
    module = loss.torch(reduction="sum").to(dev)
    assert all(b.device == dev and b.dtype == torch.float64 for b in module.buffers())
    assert module(x, y, **required).device == dev


def test_multitask_module_stays_on_the_inputs_device():
    dev = torch.device("meta")
    mt = cl.multitask({"a": cl.get("mse"), "b": cl.get("cross_entropy")}, weighting="uncertainty")
    module = mt.torch().to(dev)
    x = torch.empty(6, device=dev, requires_grad=True)
    z = torch.empty(6, 3, device=dev, requires_grad=True)
    out = module(
        {"a": x, "b": z}, {"a": torch.empty(6, device=dev), "b": torch.empty(6, 3, device=dev)}
    )
    assert out.device == dev
    out.backward()
    assert x.grad.device == dev and z.grad.device == dev
    assert all(p.grad.device == dev for p in module.parameters())


# -- found by the training-integration review (session 5) ----------------------------
def test_in_place_change_of_a_none_output_does_not_corrupt_the_gradient():
    # exp(p - y) is its own derivative: the fused kernel returns one buffer twice
    loss = cl.define("inplace_exp", "exp(p - y)", inputs=("p", "y"))
    cases = [
        (loss, lambda p, y: torch.exp(p - y)),
        (cl.define("inplace_lin", "p*y", inputs=("p", "y")), lambda p, y: p * y),
    ]
    for ours, ref in cases:
        x = torch.randn(7, dtype=torch.float64, requires_grad=True)
        y = torch.randn(7, dtype=torch.float64)
        out = ours(x, y, reduction="none")
        out.mul_(0.5)
        out.sum().backward()
        xr = x.detach().clone().requires_grad_(True)
        (0.5 * ref(xr, y)).sum().backward()
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=0)


def test_class_axis_none_output_changed_in_place_keeps_its_gradient():
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, 1, 2, 0])
    out = cl.get("cross_entropy")(z, t, reduction="none")
    out.mul_(torch.arange(1.0, 6.0, dtype=torch.float64))
    out.sum().backward()
    zr = z.detach().clone().requires_grad_(True)
    w = torch.arange(1.0, 6.0, dtype=torch.float64)
    (F.cross_entropy(zr, t, reduction="none") * w).sum().backward()
    torch.testing.assert_close(z.grad, zr.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_integer_targets_are_not_rounded_to_a_half_input(dtype):
    # counts and ordinal labels: 1001 is 1000 in bfloat16, 257 is 256; computed in float32
    x = torch.tensor([1000.0, 300.0, 2.5], dtype=dtype)
    t = torch.tensor([1001, 257, 3])
    ref = F.mse_loss(x.float(), t.float(), reduction="none")
    got = cl.get("mse")(x, t, reduction="none")
    torch.testing.assert_close(got.float(), ref.to(dtype).float(), rtol=0, atol=0)
    counts = torch.tensor([1001, 3001, 7])
    logits = torch.tensor([6.9, 8.0, 2.0], dtype=dtype)
    ref = F.poisson_nll_loss(logits.float(), counts.float(), log_input=True, reduction="none")
    got = cl.get("poisson_nll")(logits, counts, reduction="none")
    torch.testing.assert_close(got.float(), ref.to(dtype).float(), rtol=0, atol=0)
    # an integer sample weight and param tensor likewise
    w = torch.tensor([257, 1, 1])
    ref = F.mse_loss(x.float(), t.float(), reduction="none") * 257
    got = cl.get("mse")(x, t, weight=w, reduction="none")[0]
    assert float(got) == float(ref[0].to(dtype))


def test_module_reduction_can_be_chosen_per_call():
    x, y = torch.randn(6), torch.randn(6)
    module = cl.get("huber").torch(delta=0.5)
    torch.testing.assert_close(module(x, y), F.huber_loss(x, y, delta=0.5))
    torch.testing.assert_close(
        module(x, y, reduction="none"), F.huber_loss(x, y, delta=0.5, reduction="none")
    )
    torch.testing.assert_close(
        module(x, y, reduction="sum"), F.huber_loss(x, y, delta=0.5, reduction="sum")
    )
    assert module.reduction == "mean"


def test_a_parameter_given_to_the_module_is_learned():
    # the learnable focusing parameter, trained with the model: the module's parameter
    torch.manual_seed(0)
    x = torch.randn(64, dtype=torch.float64)
    y = (torch.rand(64) > 0.5).double()
    gamma = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    crit = cl.get("focal").torch(gamma=gamma)
    assert [p is gamma for p in crit.parameters()] == [True]
    opt = torch.optim.SGD(crit.parameters(), lr=10.0)
    for _ in range(3):
        opt.zero_grad()
        value = crit(x, y)
        g = gamma.detach().clone().requires_grad_(True)
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        ref = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** g).mean()
        ref.backward()
        torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=0)
        value.backward()
        torch.testing.assert_close(gamma.grad, g.grad, rtol=1e-10, atol=0)
        opt.step()
    assert gamma.item() != 2.0
    import copy

    clone = copy.deepcopy(crit)
    assert clone.gamma.item() == gamma.item() and clone.gamma is not gamma
    assert "gamma" in crit.state_dict()


def test_a_tensor_requiring_grad_is_never_silently_frozen():
    p = torch.tensor(2.0, requires_grad=True)
    with pytest.raises(TypeError, match=r"param 'gamma' is a tensor that requires grad"):
        cl.get("focal").torch(gamma=p)
    with pytest.raises(TypeError, match=r"param 'gamma': a default is a number"):
        cl.get("focal", gamma=p)
    with pytest.raises(TypeError, match=r"param 'gamma': a default is a number"):
        cl.get("focal").with_defaults(gamma=torch.nn.Parameter(torch.tensor(1.0)))
    # a plain tensor (no grad) is a value, as before
    assert cl.get("focal", gamma=torch.tensor(1.5)).params["gamma"] == 1.5


# -- torch.func and forward-mode AD (training-integration review, session 5) -----------
def _focal_reference(x, y, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss's formula, mean
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** gamma).mean()


def test_torch_func_transforms_of_an_elementwise_loss_equal_the_reference():
    from torch.func import grad, hessian, jacrev, jvp, vmap

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, dtype=torch.float64, generator=gen)
    y = torch.rand(6, dtype=torch.float64, generator=gen)
    focal = cl.get("focal")

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    close(grad(lambda a: focal(a, y))(x), grad(lambda a: _focal_reference(a, y))(x))
    close(hessian(lambda a: focal(a, y))(x), hessian(lambda a: _focal_reference(a, y))(x))
    xs = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    ys = torch.rand(4, 6, dtype=torch.float64, generator=gen)
    close(vmap(focal)(xs, ys), vmap(_focal_reference)(xs, ys))  # per-sample losses
    close(vmap(grad(focal))(xs, ys), vmap(grad(_focal_reference))(xs, ys))  # per-sample grads
    per_elem = jacrev(lambda a: focal(a, y, reduction="none"))(x)
    close(per_elem, jacrev(lambda a: _focal_reference_none(a, y))(x))
    t = torch.randn(6, dtype=torch.float64, generator=gen)
    close(
        jvp(lambda a: focal(a, y), (x,), (t,))[1],
        jvp(lambda a: _focal_reference(a, y), (x,), (t,))[1],
    )
    g, dg = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    close(
        jvp(lambda gg: focal(x, y, gamma=gg), (g,), (dg,))[1],
        jvp(lambda gg: _focal_reference(x, y, gg), (g,), (dg,))[1],
    )
    expected = jvp(lambda a: _focal_reference(a, y), (x,), (t,))[1]
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        out = focal(fwad.make_dual(x, t), y)
        close(fwad.unpack_dual(out).tangent, expected)
    # a model's parameters through functional_call (meta-learning, per-sample grads)
    model = torch.nn.Linear(3, 1).double()
    crit = focal.torch()
    params = dict(model.named_parameters())
    inp = torch.randn(6, 3, dtype=torch.float64, generator=gen)

    def objective(fn):
        return lambda p: fn(torch.func.functional_call(model, p, (inp,)).squeeze(1), y)

    ours, ref = grad(objective(crit))(params), grad(objective(_focal_reference))(params)
    for k in ours:
        close(ours[k], ref[k])


def _focal_reference_none(x, y):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return (0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2


def test_torch_func_transforms_of_cross_entropy_equal_torch():
    from torch.func import grad, vmap

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 3, 1, 2, 0])
    ce = cl.get("cross_entropy")
    torch.testing.assert_close(
        grad(lambda a: ce(a, t))(z), grad(lambda a: F.cross_entropy(a, t))(z)
    )
    zs, ts = z.reshape(5, 1, 4), t.reshape(5, 1)
    torch.testing.assert_close(vmap(ce)(zs, ts), vmap(F.cross_entropy)(zs, ts))
    torch.testing.assert_close(
        vmap(grad(ce))(zs, ts), vmap(grad(lambda a, b: F.cross_entropy(a, b)))(zs, ts)
    )
    with pytest.raises(ValueError, match=r"class index 4 outside \[0, 4\)"):
        vmap(ce)(zs, torch.tensor([0, 3, 1, 4, 0]).reshape(5, 1))


def test_vmap_over_the_target_or_a_param_equals_torch():
    # (session-6 review) vmap over the target while the captured prediction requires
    # grad, and over a 0-d param (a hyper-parameter sweep), crashed
    from torch.func import grad, vmap

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
    ys = torch.rand(3, 6, dtype=torch.float64, generator=gen)
    vmap(lambda y: cl.get("mse")(x, y))(ys).sum().backward()
    ours, x.grad = x.grad, None
    vmap(lambda y: F.mse_loss(x, y))(ys).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    z = torch.randn(4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    ts = torch.tensor([[0, 2, 1, 1], [2, 2, 0, 1]])
    vmap(lambda t: cl.get("cross_entropy")(z, t))(ts).sum().backward()
    ours, z.grad = z.grad, None
    vmap(lambda t: F.cross_entropy(z, t))(ts).sum().backward()
    torch.testing.assert_close(ours, z.grad)
    xd, y = x.detach(), ys[0]
    gammas = torch.tensor([0.0, 1.0, 2.0, 3.5], dtype=torch.float64)
    torch.testing.assert_close(
        vmap(lambda g: cl.get("focal")(xd, y, gamma=g))(gammas),
        vmap(lambda g: _focal_reference(xd, y, g))(gammas),
    )
    deltas = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(
        vmap(lambda d: cl.get("huber")(xd, y, delta=d))(deltas),
        torch.stack([F.huber_loss(xd, y, delta=float(d)) for d in deltas]),
    )
    torch.testing.assert_close(
        vmap(grad(lambda a, g: cl.get("focal")(a, y, gamma=g)), in_dims=(None, 0))(xd, gammas),
        vmap(grad(lambda a, g: _focal_reference(a, y, g)), in_dims=(None, 0))(xd, gammas),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_mode_ad_of_cross_entropy_equals_torch(reduction):
    # torch.func.jvp / hessian (forward over reverse) / forward_ad of the class-axis
    # path, against F.cross_entropy's own forward-mode AD
    import torch.autograd.forward_ad as fwad
    from torch.func import hessian, jvp

    gen = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    dz = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 3, -100, 2, 0, 1])  # one ignored position
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    ce = cl.get("cross_entropy")

    def ours(a):
        return ce(a, t, reduction=reduction, class_weight=w, label_smoothing=0.1)

    def ref(a):
        return F.cross_entropy(a, t, weight=w, reduction=reduction, label_smoothing=0.1)

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    expected = jvp(ref, (z,), (dz,))[1]
    close(jvp(ours, (z,), (dz,))[1], expected)
    with fwad.dual_level():
        close(fwad.unpack_dual(ours(fwad.make_dual(z, dz))).tangent, expected)
    if reduction != "none":
        close(hessian(ours)(z), hessian(ref)(z))
    # probability targets: a tangent on the target too, and on a sample weight
    p = torch.softmax(torch.randn(6, 4, dtype=torch.float64, generator=gen), 1)
    dp = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    sw = torch.rand(6, dtype=torch.float64, generator=gen)
    dsw = torch.randn(6, dtype=torch.float64, generator=gen)

    def ref_prob(a, b, s):
        return _reduce(F.cross_entropy(a, b, reduction="none") * s, reduction)

    close(
        jvp(lambda a, b, s: ce(a, b, reduction=reduction, weight=s), (z, p, sw), (dz, dp, dsw))[1],
        jvp(ref_prob, (z, p, sw), (dz, dp, dsw))[1],
    )


@pytest.mark.parametrize("name", ["focal", "asymmetric"])
def test_forward_over_reverse_with_learned_params_passes_gradgradcheck(name):
    # (session-6 review) the log-mixture autograd Functions of the p_t form had no jvp:
    # Hessians by forward over reverse (torch.func.hessian, autograd.functional with
    # outer_jacobian_strategy="forward-mode") failed for a learned gamma
    from torch.func import hessian

    loss = cl.get(name)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(5, dtype=torch.float64, generator=gen)
    w = (torch.rand(5, dtype=torch.float64, generator=gen) + 0.5).requires_grad_(True)
    names = list(loss.params)
    ps = [
        torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
        for v in loss.params.values()
    ]

    def f(x, w, *ps):
        return loss(x, y, weight=w, **dict(zip(names, ps, strict=True)))

    assert torch.autograd.gradcheck(f, (x, w, *ps), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, w, *ps), check_fwd_over_rev=True)
    if name == "focal":
        g = torch.tensor(2.5, dtype=torch.float64)
        ours = hessian(lambda a, gg: loss(a, y, gamma=gg), argnums=(0, 1))(x.detach(), g)
        ref = hessian(lambda a, gg: _focal_reference(a, y, gg), argnums=(0, 1))(x.detach(), g)
        for a, b in zip(ours, ref, strict=True):
            for aa, bb in zip(a, b, strict=True):
                torch.testing.assert_close(aa, bb, rtol=1e-9, atol=1e-12)


def _reduce(v, reduction):
    return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v


def test_forward_mode_ad_through_class_axis_params():
    # tangents on a per-class param (class weights, with "sum": not in a denominator)
    # and on a scalar param (label smoothing), against a hand-written formula
    from torch.func import jvp

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    dw = torch.randn(3, dtype=torch.float64, generator=gen)
    ls = torch.tensor(0.2, dtype=torch.float64)
    ce = cl.get("cross_entropy")

    def hand(cw, eps):  # torch's label-smoothed, class-weighted CE, summed
        logp = torch.log_softmax(z, 1)
        nll = -logp.gather(1, t[:, None])[:, 0] * cw[t]
        smooth = -(logp * cw).sum(1) / 3
        return ((1 - eps) * nll + eps * smooth).sum()

    def ours(cw, eps):
        return ce(z, t, reduction="sum", class_weight=cw, label_smoothing=eps)

    for tangents in ((dw, torch.zeros_like(ls)), (torch.zeros_like(w), torch.ones_like(ls))):
        torch.testing.assert_close(
            jvp(ours, (w, ls), tangents)[1], jvp(hand, (w, ls), tangents)[1], rtol=1e-10, atol=0
        )
    # with "mean" the class weights are in the denominator: refused, as in reverse mode
    with pytest.raises(NotImplementedError, match="'class_weight' through the weighted mean"):
        jvp(lambda cw: ce(z, t, class_weight=cw), (w,), (dw,))


@pytest.mark.parametrize("name", [n for n in cl.names() if cl.get(n).classes])
def test_forward_mode_ad_of_every_class_loss_equals_finite_differences(name):
    # the directional derivative along a random tangent of the prediction and of every
    # param (per-class ones as (C,) tensors), against a central difference of the loss
    # itself (float64)
    from torch.func import jvp

    loss = cl.get(name)
    gen = torch.Generator().manual_seed(4)
    c = 5
    prob = loss.domains.get(loss.inputs[0]) == "probability"
    z = torch.randn(7, c, dtype=torch.float64, generator=gen)
    z = torch.softmax(z, 1) if prob else z
    t = torch.softmax(torch.randn(7, c, dtype=torch.float64), 1) if prob else torch.arange(7) % c
    names = list(loss.params)
    values = []
    for n in names:
        if n in loss.per_class:
            v = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
            values.append(v * 10 if n == "counts" else v)
        else:
            default = loss.params[n]
            values.append(torch.tensor(0.1 if default == 0 else default, dtype=torch.float64))
    dz = torch.randn(7, c, dtype=torch.float64, generator=gen)
    if prob:  # stay on the simplex
        dz = dz - dz.mean(1, keepdim=True)
    dvalues = [torch.randn(v.shape, dtype=torch.float64, generator=gen) * 0.1 for v in values]

    def f(a, *ps):
        return loss(a, t, reduction="sum", **dict(zip(names, ps, strict=True)))

    h = 1e-6
    plus = f(z + h * dz, *(v + h * d for v, d in zip(values, dvalues, strict=True)))
    minus = f(z - h * dz, *(v - h * d for v, d in zip(values, dvalues, strict=True)))
    fd = (plus - minus) / (2 * h)
    ours = jvp(f, (z, *values), (dz, *dvalues))[1]
    torch.testing.assert_close(ours, fd, rtol=1e-6, atol=1e-8)


def test_under_autocast_losses_are_float32_like_torchs():
    # torch.autocast runs every torch.nn.functional loss in float32 and returns float32
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x = torch.randn(16, 3)
    y = (torch.rand(16, 4) > 0.5).float()
    t = torch.randint(0, 4, (16,))
    cases = [
        ("bce_with_logits", y, lambda z: F.binary_cross_entropy_with_logits(z, y)),
        ("mse", y, lambda z: F.mse_loss(z, y)),
        ("cross_entropy", t, lambda z: F.cross_entropy(z, t)),
    ]
    for name, target, reference in cases:
        grads = []
        for fn in (lambda z, n=name, tg=target: cl.get(n)(z, tg), reference):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z = model(x)
                assert z.dtype == torch.bfloat16
                value = fn(z)
            assert value.dtype == torch.float32, name
            value.backward()
            grads.append((value.detach(), model.weight.grad.clone()))
        (ours, g_ours), (ref, g_ref) = grads
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    # outside autocast, a bfloat16 input still gives a bfloat16 loss (the input's dtype)
    z = torch.randn(4, dtype=torch.bfloat16)
    assert cl.get("mse")(z, torch.zeros(4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_second_derivatives_are_finite_where_a_branch_is_not_taken():
    # (session-6 parity review) autograd of the recomputed derivative sent the untaken
    # branch of a where() a zero gradient, which log's or a division's infinite local
    # derivative made nan: smooth_l1(beta=0), a safe-log loss at 0, bce at p = 0 or 1
    def hessian_diag(f, x):
        a = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(a), a, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), a)
        return g.detach(), h

    zeros = torch.zeros(3, dtype=torch.float64)
    x = torch.tensor([0.3, -2.0, 0.0], dtype=torch.float64)
    for beta in (0.0, 1e-320):
        ours = hessian_diag(
            lambda a, b=beta: cl.get("smooth_l1")(a, zeros, beta=b, reduction="sum"), x
        )
        ref = hessian_diag(lambda a, b=beta: F.smooth_l1_loss(a, zeros, beta=b, reduction="sum"), x)
        torch.testing.assert_close(ours[0][:2], ref[0][:2])
        torch.testing.assert_close(ours[1], ref[1])
    xlogx = cl.define("xlogx_h", "where(p > 0, p*log(p), 0) + (p - y)**2", inputs=("p", "y"))
    p = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    _, h = hessian_diag(lambda a: xlogx(a, zeros, reduction="sum"), p)
    torch.testing.assert_close(h, torch.tensor([2.0, 1 / 0.5 + 2, 2.0], dtype=torch.float64))
    # (review of the guard) maximum() compares both sides, so it is not guarded: bce's
    # clamp keeps its value -100 in the differentiable kernel (a guard made it 0)
    q = torch.tensor([0.0, 1e-50, 0.3, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    (gw,) = torch.autograd.grad(
        cl.get("bce")(q, t, weight=w, reduction="sum"), w, create_graph=True
    )
    torch.testing.assert_close(gw, F.binary_cross_entropy(q, t, reduction="none"))
    # a NaN input keeps a NaN gradient (the else branch of where() is taken at NaN)
    nan = torch.tensor([float("nan"), 0.5], dtype=torch.float64)
    g, _ = hessian_diag(lambda a: cl.get("cauchy")(a, zeros[:2], reduction="sum"), nan)
    assert torch.isnan(g[0]) and torch.isfinite(g[1])
    g, _ = hessian_diag(lambda a: xlogx(a, zeros[:2], reduction="sum"), nan)
    assert torch.isnan(g[0]) and torch.isfinite(g[1])
    # a gradient penalty through a model: finite and equal to torch's
    w0 = torch.tensor([0.5, -1.5], dtype=torch.float64)
    inp = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 1.0]], dtype=torch.float64)

    def penalty_grad(loss_fn):
        w = w0.clone().requires_grad_(True)
        xin = inp.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(loss_fn(xin @ w, zeros), xin, create_graph=True)
        (gw,) = torch.autograd.grad((gx**2).sum(), w)
        return gw

    ours = penalty_grad(lambda a, b: cl.get("smooth_l1")(a, b, beta=0.0))
    ref = penalty_grad(lambda a, b: F.smooth_l1_loss(a, b, beta=0.0))
    torch.testing.assert_close(ours, ref)


def test_forward_over_forward_equals_torch():
    # (session-6 review) jvp of jvp went through the Functions' jvp, whose output the
    # outer level does not differentiate: v'Hv came out exactly 0
    from torch.func import hessian, jacfwd, jvp

    gen = torch.Generator().manual_seed(8)
    z = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    v = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 3, 1, 1, 2])
    x = torch.randn(6, dtype=torch.float64, generator=gen)
    u = torch.randn(6, dtype=torch.float64, generator=gen)
    y = torch.rand(6, dtype=torch.float64, generator=gen)
    ce, focal = cl.get("cross_entropy"), cl.get("focal")

    def vhv(f, at, along):
        return jvp(lambda q: jvp(f, (q,), (along,))[1], (at,), (along,))[1]

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    close(vhv(lambda a: ce(a, t), z, v), vhv(lambda a: F.cross_entropy(a, t), z, v))
    close(vhv(lambda a: focal(a, y), x, u), vhv(lambda a: _focal_reference(a, y), x, u))
    close(jacfwd(jacfwd(lambda a: ce(a, t)))(z), hessian(lambda a: F.cross_entropy(a, t))(z))
    close(jacfwd(jacfwd(lambda a: focal(a, y)))(x), hessian(lambda a: _focal_reference(a, y))(x))
    # at an exact zero residual too (log_cosh's |r| had a zero second derivative at 0)
    r = torch.tensor([0.0, 0.3, -2.0], dtype=torch.float64)
    lc = jacfwd(jacfwd(lambda a: cl.get("log_cosh")(a, torch.zeros_like(r), reduction="sum")))(r)
    close(torch.diagonal(lc), 1 / torch.cosh(r) ** 2)


def test_log1p_branches_and_huge_int_params():
    # (session-6 review of the guard) log1p is singular at -1 like log at 0; an int
    # param beyond every float is refused naming it (it was a bare OverflowError)
    loss = cl.define("l1p_g", "where(p > -1, log1p(p), 0) + 0*y", inputs=("p", "y"))
    x = torch.tensor([-1.0, 0.5], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(2, dtype=torch.float64)
    (g,) = torch.autograd.grad(loss(x, zeros, reduction="sum"), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(h, torch.tensor([0.0, -1 / 1.5**2], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"param 'gamma' \(an int of 401 digits\) is beyond"):
        cl.get("focal")(torch.randn(3), torch.rand(3), gamma=10**400)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.0, -2.0, 4.0])
def test_general_robust_second_derivatives_equal_finite_differences(alpha):
    # nested where() branches: an inner branch's guard is guarded by the outer branches
    # too (at alpha = 2 the general branch divides by |alpha - 2|: NaN before)
    loss = cl.get("general_robust")
    x = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = torch.zeros(3, dtype=torch.float64)
    (g,) = torch.autograd.grad(loss(x, y, alpha=alpha, reduction="sum"), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)

    def grad_at(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(loss(z, y, alpha=alpha, reduction="sum"), z)[0]

    eps = 1e-6
    fd = (grad_at(x.detach() + eps) - grad_at(x.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(h, fd, rtol=1e-6, atol=1e-8)
