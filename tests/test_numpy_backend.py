"""NumPy backend: values against closed forms, gradients against finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.special

import customloss as cl

HUBERISH = cl.define(
    "huberish",
    "where(abs(p - y) < d, 0.5*(p - y)**2, d*(abs(p - y) - 0.5*d))",
    inputs=("p", "y"),
    params={"d": 1.0},
)
LOGCOSH = cl.define("lc", "log(cosh(p - y))", inputs=("p", "y"))
NAIVE_BCE = cl.define(
    "nbce_np", "-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x)))", inputs=("x", "y")
)


def huber_ref(p, y, d):
    r = np.abs(p - y)
    return np.where(r < d, 0.5 * r**2, d * (r - 0.5 * d))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_against_closed_form(reduction):
    rng = np.random.default_rng(0)
    p, y = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4))
    ref = huber_ref(p, y, 1.5)
    ref = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    np.testing.assert_allclose(HUBERISH(p, y, d=1.5, reduction=reduction), ref, rtol=1e-12)


def test_reductions_return_numpy_scalars_and_arrays():
    p = np.linspace(-1, 1, 5)
    v = HUBERISH(p, np.zeros(5))
    assert isinstance(v, np.floating) and np.ndim(v) == 0
    float(v)
    assert HUBERISH(p, np.zeros(5), reduction="none").shape == (5,)
    v32 = HUBERISH(p.astype(np.float32), np.zeros(5, np.float32))
    assert v32.dtype == np.float32
    v16 = HUBERISH(p.astype(np.float16), np.zeros(5, np.float16), reduction="none")
    assert v16.dtype == np.float16


def test_array_likes_and_integer_targets():
    assert float(HUBERISH([0.0, 3.0], [0, 0])) == pytest.approx((0 + 2.5) / 2)


def test_log_cosh_stable_for_large_residuals():
    r = np.array([0.0, 0.5, 30.0, 800.0, 1e30, -1e30])
    got = LOGCOSH(r, np.zeros_like(r), reduction="none")
    ref = np.abs(r) + np.log1p(np.exp(-2 * np.abs(r))) - np.log(2)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert np.isfinite(LOGCOSH.gradient(r, np.zeros_like(r), reduction="none")).all()


def _finite_difference(loss, p, y, wrt, eps=1e-6, **params):
    args = {"p": p, "y": y, **{k: np.asarray(v, dtype=np.float64) for k, v in params.items()}}
    base = np.array(args[wrt], dtype=np.float64)
    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape or ()):
        hi, lo = base.copy(), base.copy()
        hi[idx] += eps
        lo[idx] -= eps
        vals = []
        for arr in (hi, lo):
            a = {**args, wrt: arr}
            pp, yy = a.pop("p"), a.pop("y")
            vals.append(float(loss(pp, yy, **a)))
        grad[idx] = (vals[0] - vals[1]) / (2 * eps)
    return grad


@pytest.mark.parametrize("wrt", ["p", "y", "d"])
def test_gradient_against_finite_differences(wrt):
    rng = np.random.default_rng(1)
    p, y = rng.normal(size=7) * 2, rng.normal(size=7)
    d = np.array(0.8)
    got = HUBERISH.gradient(p, y, wrt=wrt, d=d)
    ref = _finite_difference(HUBERISH, p, y, wrt, d=d)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)


def test_gradient_with_weight_and_sum():
    p, y = np.array([0.2, -3.0, 1.0]), np.array([0.0, 0.0, 0.5])
    w = np.array([1.0, 2.0, 0.5])
    got = HUBERISH.gradient(p, y, weight=w, reduction="sum")
    r = p - y
    ref = w * np.where(np.abs(r) < 1, r, np.sign(r))
    np.testing.assert_allclose(got, ref)


def test_naive_bce_numpy_finite_at_extreme_logits():
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], dtype=np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0], dtype=np.float32)
    v = NAIVE_BCE(x, y, reduction="none")
    ref = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x.astype(np.float64))))
    np.testing.assert_allclose(v, ref, rtol=1e-6, atol=1e-37)  # float32 denormals
    g = NAIVE_BCE.gradient(x, y, reduction="none")
    with np.errstate(over="ignore"):
        ref_g = 1 / (1 + np.exp(-x.astype(np.float64))) - y
    np.testing.assert_allclose(g, ref_g, rtol=1e-6, atol=1e-30)


def test_errors():
    with pytest.raises(TypeError, match="input must be a floating-point array, got dtype int64"):
        HUBERISH(np.array([1, 2]), np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="dtype bool"):
        HUBERISH(np.array([True]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"input shape \(2,\) and target shape \(3,\)"):
        HUBERISH(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"param 'd' has shape \(3,\)"):
        HUBERISH(np.zeros(2), np.zeros(2), d=np.ones(3))
    with pytest.raises(TypeError, match="param 'd' must be numeric"):
        HUBERISH(np.zeros(2), np.zeros(2), d="x")
    with pytest.raises(ValueError, match="has no symbol 'z'"):
        HUBERISH.gradient(np.zeros(2), np.zeros(2), wrt="z")


# -- found by the session-6 review of the NumPy backend --------------------------------
def test_none_outputs_and_gradients_are_fresh_writable_arrays():
    # a constant derivative (R.expand) and the class-axis "none" values were read-only
    # broadcasts: `g *= lr` raised
    lin = cl.define("lin_np", "p - y", inputs=("p", "y"))
    p, y = np.array([0.2, 0.5, 0.9]), np.array([0.0, 1.0, 1.0])
    g = lin.gradient(p, y, reduction="none")
    g *= 0.5
    np.testing.assert_array_equal(g, [0.5, 0.5, 0.5])
    const = cl.define("const_np", "1 + 0*p*y", inputs=("p", "y"))
    v = const(p, y, reduction="none")
    v *= 2
    np.testing.assert_array_equal(v, [2.0, 2.0, 2.0])
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3))
    q = scipy.special.softmax(rng.normal(size=(4, 3)), axis=1)
    for name in ("cross_entropy", "categorical_crossentropy", "poly1", "softmax_focal"):
        loss = cl.get(name)
        pred = scipy.special.softmax(z, axis=1) if name == "categorical_crossentropy" else z
        values = loss(pred, q, reduction="none")
        expected = values.copy()
        values *= 0  # in place: allowed, and changes only this result
        np.testing.assert_array_equal(loss(pred, q, reduction="none"), expected)
    ce = -(q * scipy.special.log_softmax(z, axis=1)).sum(axis=1)
    np.testing.assert_allclose(cl.get("cross_entropy")(z, q, reduction="none"), ce, rtol=1e-12)


def test_no_floating_point_errors_where_the_result_is_finite():
    # float16 gradients raised "underflow in cast" under np.errstate(all="raise"), and a
    # float32 input with huber's delta = 1e300 warned "overflow in cast"
    x = np.array([-30.0, 0.0, 30.0], np.float16)
    y = np.array([0.0, 1.0, 1.0], np.float16)
    bce = cl.get("bce_with_logits")
    with np.errstate(all="raise"):
        g = bce.gradient(x, y, reduction="none")
    expected = (scipy.special.expit(x.astype(np.float64)) - y) / 1.0
    np.testing.assert_allclose(g.astype(np.float64), expected, atol=1e-3)
    assert g.dtype == np.float16
    p32 = np.array([0.1, 2.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cl.get("huber")(p32, np.zeros(2, np.float32), delta=1e300, reduction="none")
    np.testing.assert_allclose(got, 0.5 * p32.astype(np.float64) ** 2, rtol=1e-6)


def test_masked_ragged_and_label_mistakes_get_errors_naming_the_argument():
    mse = cl.get("mse")
    data = np.ma.masked_array([1.0, 2.0, 100.0], mask=[False, False, True])
    with pytest.raises(TypeError, match="input is a masked array: the loss would ignore its mask"):
        mse(data, np.zeros(3))
    with pytest.raises(TypeError, match="target is a masked array"):
        mse(np.zeros(3), data)
    with pytest.raises(TypeError, match="weight is a masked array"):
        mse(np.zeros(3), np.zeros(3), weight=data)
    with pytest.raises(ValueError, match="target is not an array of numbers"):
        mse(np.zeros(2), [[1.0], [1.0, 2.0]])
    ce = cl.get("cross_entropy")
    z = np.zeros((3, 4))
    for labels in (np.array([0.0, 2.0, 1.0]), np.array([True, False, True])):
        with pytest.raises(ValueError, match=r"target has the shape of class indices \(3,\)"):
            ce(z, labels)
    import torch

    with pytest.raises(ValueError, match=r"target has the shape of class indices \(3,\)"):
        ce(torch.zeros(3, 4), torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"the input has no classes \(size 0 along class_dim 1"):
        ce(np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(ValueError, match=r"the input has no classes"):
        ce(torch.zeros(2, 0), torch.zeros(2, dtype=torch.long))


def test_erf_losses_equal_scipy_in_every_float_dtype():
    import sympy

    @cl.loss("erf_np")
    def loss(p, y):
        return sympy.erf(p - y) ** 2

    rng = np.random.default_rng(1)
    p, y = rng.normal(size=50), rng.normal(size=50)
    for dt in (np.float16, np.float32, np.float64, np.longdouble):
        got = loss(p.astype(dt), y.astype(dt), reduction="none")
        assert got.dtype == dt
        p64, y64 = p.astype(dt).astype(np.float64), y.astype(dt).astype(np.float64)
        ref = scipy.special.erf(p64 - y64) ** 2
        tol = {np.float16: 2e-3, np.float32: 1e-6}.get(dt, 1e-14)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)
