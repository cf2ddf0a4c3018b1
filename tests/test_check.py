"""Tests for customloss.check: the extreme-value scan and its true values."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy
import torch

import customloss as cl
from customloss.check import (
    CLASS_TARGETS,
    PREDICTIONS,
    CheckReport,
    Problem,
    check,
    class_targets,
    mp_class_function,
    mp_function,
    true_derivative,
    true_value,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)


def _problems(report: CheckReport, **match: object) -> list[Problem]:
    return [p for p in report.problems if all(getattr(p, k) == v for k, v in match.items())]


# ---------------------------------------------------------------------------
# losses that must come out clean
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_naive_bce_with_logits_is_clean(device: str) -> None:
    # The acceptance case of the foundation issue: naive BCE on logits, written with
    # log(sigmoid), compiles to a stable form (naive lambdify gives inf/nan here).
    loss = cl.define(
        "naive_bce",
        "-(y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x)))",
        inputs=("x", "y"),
    )
    report = check(loss, device=device)
    assert report.ok, str(report)
    assert report.evaluated > 1000
    assert report.device == device


def test_mse_overflow_beyond_dtype_is_not_blamed() -> None:
    # (1e30 - 0)**2 = 1e60: inf in float32/bfloat16 is the correctly rounded answer;
    # float64 holds it.  Nothing to report, and the point was really evaluated.
    mse = cl.define("mse", "(p - t)**2", inputs=("p", "t"))
    report = check(mse)
    assert report.ok, str(report)
    x = torch.tensor([1e30], dtype=torch.float32)
    assert torch.isinf(mse(x, torch.zeros(1), reduction="none")).all()
    assert 1e30 in report.predictions


def test_focal_torchvision_form_gradients_are_finite_for_all_gammas() -> None:
    # torchvision.ops.sigmoid_focal_loss, written in the DSL: ce * (1 - p_t)**gamma.
    focal = cl.define(
        "focal",
        "-(y*log_sigmoid(x) + (1-y)*log_sigmoid(-x))"
        " * (1 - (y*sigmoid(x) + (1-y)*(1-sigmoid(x))))**gamma",
        inputs=("x", "y"),
        params={"gamma": 2.0},
    )
    report = check(focal, params={"gamma": GAMMAS}, wrt=("x",))
    assert report.ok, str(report)
    assert {s["gamma"] for s in report.param_sets} == set(GAMMAS)


# ---------------------------------------------------------------------------
# losses that must be reported
# ---------------------------------------------------------------------------
def test_unstable_tanh_ratio_is_reported_where_true_value_is_finite() -> None:
    # (e^x - e^-x)/(e^x + e^-x) = tanh(x): the stability pass has no rule for it, so
    # the compiled code computes inf/inf = nan once exp overflows: at |x| >= 89 in
    # float32 (and bfloat16), at |x| >= 710 in float64.  The true value is +-1 - y.
    loss = cl.define("tanh_ratio", "(exp(x) - exp(-x))/(exp(x) + exp(-x)) - y", inputs=("x", "y"))
    report = check(loss)
    assert not report.ok
    # the reported points are exactly those where exp overflows in that dtype
    for p in _problems(report, quantity="value"):
        assert math.isnan(p.got)
        assert abs(p.input) > (88.7 if p.dtype != "float64" else 709.8)
        assert p.expected == pytest.approx(math.copysign(1.0, p.input) - p.target)
    hits = {(p.dtype, p.backend, p.input) for p in _problems(report, quantity="value", target=0.0)}
    for backend in ("numpy", "torch"):
        assert ("float32", backend, 100.0) in hits
        assert ("float64", backend, 1e4) in hits
        assert ("float64", backend, 100.0) not in hits  # exp(100) is fine in float64
    assert ("bfloat16", "torch", 100.0) in hits
    # moderate inputs are fine
    assert not [p for p in report.problems if abs(p.input) <= 5]
    # the gradient (1 - tanh^2 = 0 out there) is nan too
    grads = _problems(report, quantity="d/dx", dtype="float32", backend="torch", target=0.0)
    assert {p.input for p in grads} >= {-100.0, 100.0, 1e4, -1e4}
    assert all(p.expected == 0.0 for p in grads)


def test_nan_is_reported_where_true_value_is_beyond_the_dtype() -> None:
    # exp(x) - exp(x/2) at x = 1e4 is a finite number beyond every float: inf is the
    # right answer, but the compiled inf - inf = nan is not.  At x = 100 float32
    # gives inf - 5e21 = inf (right), float64 the finite value.
    loss = cl.define("exp_diff", "exp(x) - exp(x/2) + 0*y", inputs=("x", "y"))
    report = check(loss, wrt=("x",))
    values = _problems(report, quantity="value")
    assert values
    assert all(p.input >= 9984.0 for p in values)  # 1e4 rounds to 9984 in bfloat16
    assert all(math.isnan(p.got) and "beyond" in p.what for p in values)
    assert not _problems(report, input=100.0)


def test_probability_bce_limits_and_domain() -> None:
    # -(y log p + (1-y) log(1-p)): at p = 0, y = 0 the compiled 0 * log(0) is nan but
    # the limit is 0 (torch's BCE gives 0); at p = 0, y = 1 the loss is +inf (right);
    # at p < 0 the loss is undefined: skipped, never reported.
    bce = cl.define("bce_naive", "-(y*log(p) + (1-y)*log(1-p))", inputs=("p", "y"))
    report = check(bce)
    at_zero = _problems(report, quantity="value", input=0.0, target=0.0)
    assert at_zero and all(p.expected == 0.0 and "limit" in p.what for p in at_zero)
    assert _problems(report, quantity="value", input=1.0, target=1.0)
    assert not _problems(report, quantity="value", input=0.0, target=1.0)  # +inf is right
    assert not [p for p in report.problems if p.input < 0]  # outside the domain
    assert report.skipped > 0
    # and the gradient at p = 0, y = 0 is the one-sided derivative 1
    grads = _problems(report, quantity="d/dp", input=0.0, target=0.0)
    assert grads and all(p.expected == pytest.approx(1.0) for p in grads)


def test_param_exponent_gradient_at_zero_base_is_reported() -> None:
    # d/dk max(p - y, 0)**k = max(p - y, 0)**k * log(max(p - y, 0)): 0 * (-inf) = nan
    # below the kink, where the function is identically 0 and the true derivative is 0.
    loss = cl.define("relu_pow", "maximum(p - y, 0)**k", inputs=("p", "y"), params={"k": 1.5})
    report = check(loss, predictions=(-1.0, 2.0), targets=(0.0,), params={"k": []}, wrt=("k",))
    found = _problems(report, quantity="d/dk", input=-1.0)
    # the true value is independent of our symbolic derivative: 0
    assert all(p.expected == 0.0 for p in found)
    k = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    loss(
        torch.tensor([-1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64), k=k
    ).backward()
    assert bool(torch.isnan(k.grad).any()) == bool(found)  # the report matches torch itself


def test_backend_exception_is_reported_once_per_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    mse = cl.define("mse_boom", "(p - t)**2", inputs=("p", "t"))

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(mse, "gradient", boom)
    report = check(mse, dtypes=["float32"], backends=["numpy"])
    assert len(report.problems) == 1
    (p,) = report.problems
    assert p.backend == "numpy" and p.quantity == "call" and "RuntimeError: boom" in p.what
    assert "whole grid" in str(p)


# ---------------------------------------------------------------------------
# the report and the arguments
# ---------------------------------------------------------------------------
def test_report_is_readable_and_groups_backends() -> None:
    loss = cl.define(
        "tanh_ratio2", "(exp(x) - exp(-x))/(exp(x) + exp(-x)) + 0*y", inputs=("x", "y")
    )
    report = check(loss, targets=(0.0,), wrt=())
    text = str(report)
    assert text.startswith("check('tanh_ratio2'):")
    assert f"{len(report.problems)} problem(s)" in text
    assert "input=100 target=0: value is nan; true value 1" in text
    assert "[numpy,torch; float32,bfloat16]" in text
    assert not report and not report.ok
    assert len(report.format(limit=2).splitlines()) == 4  # summary, 2 lines, "... more"
    assert "more (see .problems)" in report.format(limit=2)


def test_param_sets_are_one_at_a_time() -> None:
    loss = cl.define(
        "two", "(p - y)**2 * a + b*abs(p - y)", inputs=("p", "y"), params={"a": 1.0, "b": 2.0}
    )
    report = check(loss, params={"a": [0.5, 1.0], "b": [3.0]}, dtypes=["float64"])
    assert report.param_sets == [{"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 2.0}, {"a": 1.0, "b": 3.0}]
    with pytest.raises(TypeError, match="no param 'c'.*valid params: a, b"):
        check(loss, params={"c": [1.0]})


def test_required_and_vector_params_get_values() -> None:
    loss = cl.define("req", "w*(p - y)**2", inputs=("p", "y"), params={"w": None})
    report = check(loss, dtypes=["float64"])
    assert report.ok and report.param_sets[0] == {"w": 1.0}
    vec = cl.define("vec", "w*(p - y)**2", inputs=("p", "y"), params={"w": (2.0, 3.0)})
    report = check(vec, params={"w": []}, dtypes=["float64"])
    assert [s["w"] for s in report.param_sets] == [2.0, 3.0]


def test_argument_errors_name_the_problem() -> None:
    mse = cl.define("mse_args", "(p - t)**2", inputs=("p", "t"))
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        check(mse, dtypes=["int8"])
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        check(mse, backends=["jax"])
    with pytest.raises(ValueError, match="no input or param 'q'"):
        check(mse, wrt=["q"])
    with pytest.raises(TypeError, match="needs a customloss Loss"):
        check(lambda p, y: p)  # type: ignore[arg-type]


def test_dtype_spellings_and_float16() -> None:
    mse = cl.define("mse_f16", "(p - t)**2", inputs=("p", "t"))
    report = check(mse, dtypes=[torch.float16, np.float32, "float64"])
    assert report.dtypes == ("float16", "float32", "float64")
    assert report.ok, str(report)
    # 1e30 is not a float16: dropped for that dtype, kept for the others
    only16 = check(mse, dtypes=["float16"], backends=["torch"], wrt=())
    assert only16.evaluated == (len(PREDICTIONS) - 2) * 4


# ---------------------------------------------------------------------------
# the true values themselves, against closed forms
# ---------------------------------------------------------------------------
P, Y, K = (cl.dsl.symbol(n) for n in ("p", "y", "k"))


def _fn(expr: sympy.Expr) -> object:
    return mp_function(expr, (P, Y, K))


def test_true_value_has_no_overflow() -> None:
    # log(1 + exp(1e4)) = 1e4 (+ e^-1e4); no float gets this from the naive form
    tv = true_value(_fn(sympy.log(1 + sympy.exp(P))), (1e4, 0.0, 0.0))
    assert tv.kind == "finite" and tv.value == 1e4 and not tv.limit


def test_true_value_limits() -> None:
    # p log p -> 0 at 0 (right side; the left is complex: outside the domain)
    tv = true_value(_fn(P * sympy.log(P)), (0.0, 0.0, 0.0))
    assert (tv.kind, tv.value, tv.limit) == ("finite", 0.0, True)
    # log(p) at 0: -inf from the only side in the domain
    assert true_value(_fn(sympy.log(P) * 1), (0.0, 0.0, 0.0)).value == -math.inf
    # log of a negative number is undefined, also when multiplied by 0
    assert true_value(_fn(Y * sympy.log(P)), (-1.0, 0.0, 0.0)).kind == "undefined"
    # 1/p at 0: +inf on one side, -inf on the other: a pole, undefined
    assert true_value(_fn(1 / P), (0.0, 0.0, 0.0)).kind == "undefined"


def test_true_derivative_ignores_symbolic_zero_over_zero() -> None:
    f = _fn(sympy.Max(P - Y, 0) ** K)
    # below the kink the function is 0 for every k: derivatives 0 (SymPy's form is 0/0)
    assert true_derivative(f, (-1.0, 0.0, 0.5), 0).value == 0.0
    assert true_derivative(f, (-1.0, 0.0, 0.5), 2).value == 0.0
    # above it: k (p-y)^(k-1) and (p-y)^k log(p-y)
    d = true_derivative(f, (2.0, 0.0, 0.5), 0)
    assert d.value == pytest.approx(0.5 * 2.0**-0.5, rel=1e-12)
    d = true_derivative(f, (2.0, 0.0, 0.5), 2)
    assert d.value == pytest.approx(2.0**0.5 * math.log(2.0), rel=1e-12)
    # at the kink with k = 0.5: 0 on the left, +inf on the right: undefined
    assert true_derivative(f, (0.0, 0.0, 0.5), 0).kind == "undefined"


def test_true_derivative_kinks_and_cusps() -> None:
    # |p| at 0: one-sided derivatives -1, +1: finite (any subgradient is right)
    assert true_derivative(_fn(sympy.Abs(P)), (0.0, 0.0, 0.0), 0).kind == "finite"
    # sqrt|p| at 0: +inf one side, -inf the other: undefined
    assert true_derivative(_fn(sympy.sqrt(sympy.Abs(P))), (0.0, 0.0, 0.0), 0).kind == "undefined"
    # sqrt(p) at 0: only the right side is in the domain: +inf
    assert true_derivative(_fn(sympy.sqrt(P)), (0.0, 0.0, 0.0), 0).value == math.inf
    # p log p at 0: log divergence to -inf on the right
    assert true_derivative(_fn(P * sympy.log(P)), (0.0, 0.0, 0.0), 0).value == -math.inf


def test_true_derivative_matches_closed_form_at_extreme_logits() -> None:
    # focal loss for y = 1 (no alpha): FL = -(1-p)^g log p, p = sigmoid(x);
    # dFL/dx = g p (1-p)^g log p - (1-p)^(g+1), evaluated independently in mpmath.
    x = P
    s = 1 / (1 + sympy.exp(-x))
    fl = -((1 - s) ** K) * sympy.log(s)
    f = _fn(fl)
    for g in (0.25, 2.0):
        for xv in (5.0, 30.0, 100.0):
            with mpmath.workdps(80):
                p = 1 / (1 + mpmath.exp(-xv))
                q = 1 / (1 + mpmath.exp(xv))
                want = float(g * p * q**g * mpmath.log(p) - q ** (g + 1))
            got = true_derivative(f, (xv, 1.0, g), 0)
            assert got.kind == "finite"
            assert got.value == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------
# focal at p_t -> 1: finite and equal to the analytic limit
# ---------------------------------------------------------------------------
FOCAL_TV = (
    "-(y*log_sigmoid(x) + (1-y)*log_sigmoid(-x))"
    " * (1 - (y*sigmoid(x) + (1-y)*(1-sigmoid(x))))**gamma"
)


def _focal_grad_closed_form(x: float, y: float, g: float) -> float:
    """dFL/dx for y in {0, 1} (FL with y = 0 is FL with y = 1 at -x, mirrored)."""
    sign = 1.0 if y == 1.0 else -1.0
    with mpmath.workdps(60):
        xv = mpmath.mpf(sign * x)
        p = 1 / (1 + mpmath.exp(-xv))
        q = 1 / (1 + mpmath.exp(xv))  # 1 - p without cancellation
        d = g * p * q**g * mpmath.log(p) - q ** (g + 1)
        return float(sign * d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_gradient_equals_analytic_limit(gamma: float, dtype: torch.dtype) -> None:
    focal = cl.define("focal_tv", FOCAL_TV, inputs=("x", "y"), params={"gamma": 2.0})
    xs = [5.0, 30.0, 100.0, 1e4, -5.0, -30.0, -100.0, -1e4]
    for y in (0.0, 1.0):
        # p_t -> 1: large logits for y = 1, large negative ones for y = 0
        x = torch.tensor(xs, dtype=dtype, requires_grad=True)
        focal(x, torch.full_like(x, y), reduction="sum", gamma=gamma).backward()
        got = x.grad.double().numpy()
        want = np.array([_focal_grad_closed_form(float(v), y, gamma) for v in xs])
        assert np.isfinite(got).all(), (gamma, y, got)
        tiny = torch.finfo(dtype).tiny
        np.testing.assert_allclose(
            got, want, rtol=2e-5 if dtype == torch.float32 else 1e-9, atol=10 * tiny
        )


TEXTBOOK_FOCAL = (
    "-(y*(1-sigmoid(x))**gamma*log(sigmoid(x)) + (1-y)*sigmoid(x)**gamma*log(1-sigmoid(x)))"
)


def test_textbook_focal_form_gradients_are_finite() -> None:
    # The same loss as FOCAL_TV, written the way the paper's equation reads.
    focal = cl.define("focal_textbook", TEXTBOOK_FOCAL, inputs=("x", "y"), params={"gamma": 2.0})
    report = check(focal, params={"gamma": GAMMAS}, wrt=("x",))
    assert report.ok, str(report)


def test_the_module_is_callable_as_check() -> None:
    # customloss.check is both the module and (for cl.check(loss)) the function
    import importlib

    module = importlib.import_module("customloss.check")
    mse = cl.define("mse_callable", "(p - t)**2", inputs=("p", "t"))
    report = module(mse, dtypes=["float64"], backends=["numpy"])
    assert isinstance(report, CheckReport) and report.ok
    assert report.dtypes == ("float64",) and report.backends == ("numpy",)
    assert cl.check(mse, dtypes=["float32"]).dtypes == ("float32",)


# ---------------------------------------------------------------------------
# class-axis losses (classes=True)
# ---------------------------------------------------------------------------
def _mp_logsumexp(row: tuple[float, ...]) -> mpmath.mpf:
    with mpmath.workdps(50):
        m = max(row)
        return m + mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v) - m) for v in row))


def test_class_scan_of_cross_entropy_is_clean_and_covers_the_grid() -> None:
    report = check(cl.get("cross_entropy"))
    assert report.ok, str(report)
    assert report.classes == 3
    assert (1e4, -1e4, 0.0) in report.predictions and (0.0, 0.0, 0.0) in report.predictions
    assert {0, 1, 2, -100} <= set(report.targets)  # every class and the ignore index
    assert (1.0, 0.0, 0.0) in report.targets and (0.5, 0.5, 0.0) in report.targets
    assert set(report.quantities) == {
        "value",
        "d/dz",
        "d/dy",
        "d/dclass_weight",
        "d/dlabel_smoothing",
    }
    assert report.evaluated > 10_000
    assert "rows of C=3" in report.summary()
    assert class_targets(3) == CLASS_TARGETS


def test_naive_class_loss_overflow_is_reported_with_mpmath_truth() -> None:
    # log(sum_c exp(x_c) / sum_c y_c exp(x_c)): the cross-entropy, written so that the
    # stability pass cannot rescue it: exp(1e4) overflows (inf/inf, or inf/finite).
    naive = cl.define(
        "naive_ce", "log(csum(exp(x))/csum(y*exp(x)))", inputs=("x", "y"), classes=True
    )
    report = check(naive, dtypes=["float32"], wrt=("x",))
    assert not report.ok
    values = [p for p in report.problems if p.quantity == "value"]
    assert values
    for p in values:
        assert isinstance(p.input, tuple) and len(p.input) == 3
        if isinstance(p.target, int):
            assert 0 <= p.target < 3  # ignored samples are 0, never reported
            want = _mp_logsumexp(p.input) - p.input[p.target]
        else:
            with mpmath.workdps(50):
                num = mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in p.input)
                den = mpmath.fsum(
                    w * mpmath.exp(mpmath.mpf(v)) for v, w in zip(p.input, p.target, strict=True)
                )
                want = mpmath.log(num / den)
        assert p.expected == pytest.approx(float(want), rel=1e-9)
        # only where exp overflows (or all of a row underflows) in float32
        assert max(abs(v) for v in p.input) >= 100.0
    hits = {(p.input, p.target) for p in values}
    assert ((1e4, -1e4, 0.0), 2) in hits  # true value 1e4, fits float32
    text = report.format(limit=None)
    assert "input=(10000, -10000, 0) target=class 2: value is" in text
    # per-class gradient components, named d/dx[c]: softmax(x)_c - [c == t]
    grads = [p for p in report.problems if p.quantity.startswith("d/dx[")]
    assert grads
    for p in grads:
        if isinstance(p.target, int):
            c = int(p.quantity[5])
            with mpmath.workdps(50):
                want = mpmath.exp(p.input[c] - _mp_logsumexp(p.input)) - (c == p.target)
            assert p.expected == pytest.approx(float(want), rel=1e-9, abs=1e-300)
    # the same loss on moderate logits is right: nothing below exp's overflow
    assert check(naive, predictions=[(5.0, 0.0, -5.0)], dtypes=["float32"]).ok


def test_ignored_samples_give_zero_gradient_even_at_zero_probability() -> None:
    # an ignored position contributes nothing: no 0 * inf = nan from its stand-in
    # target class having probability 0 (found by the class scan)
    cce = cl.get("categorical_crossentropy")
    q = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([-100, 2])
    cce(q, t, reduction="sum").backward()
    assert torch.equal(q.grad[0], torch.zeros(3, dtype=torch.float64))
    # the other sample: d/dq (-log q_2) = -1/q_2, as torch's nll_loss of log q
    qr = q.detach().clone().requires_grad_()
    torch.nn.functional.nll_loss(qr.log(), t, reduction="sum").backward()
    assert torch.allclose(q.grad[1], qr.grad[1])
    g = cce.gradient(q.detach().numpy(), t.numpy(), reduction="sum")
    assert np.array_equal(g[0], np.zeros(3)) and np.allclose(g[1], qr.grad[1].numpy())
    report = check(cce, predictions=[(0.0, 0.5, 0.5)], targets=[-100, 1, 2])
    assert report.ok, str(report)


def test_expanded_class_function_matches_closed_forms() -> None:
    ce = cl.get("cross_entropy")
    fn = mp_class_function(ce, 3)
    z, y = (2.0, -1.0, 0.5), (0.2, 0.3, 0.5)
    w, eps = (1.0, 2.0, 3.0), 0.1
    with mpmath.workdps(50):
        lse = _mp_logsumexp(z)
        ys = [(1 - eps) * v + eps / 3 for v in y]
        want = -mpmath.fsum(wc * yc * (zc - lse) for wc, yc, zc in zip(w, ys, z, strict=True))
        got = fn(*z, *y, *w, eps)
    assert float(got) == pytest.approx(float(want), rel=1e-14)
    # ldam's cmax: margins max_margin * n^-1/4 / max_c n_c^-1/4
    ldam = cl.get("ldam")
    counts = (1.0, 16.0, 81.0)
    m = [0.5 * c**-0.25 / 1.0 for c in counts]
    zz = [30 * (zc - mc * yc) for zc, mc, yc in zip(z, m, (0.0, 1.0, 0.0), strict=True)]
    want = -(zz[1] - _mp_logsumexp(tuple(zz)))
    got = mp_class_function(ldam, 3)(*z, 0.0, 1.0, 0.0, *counts, 0.5, 30.0)
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_class_scan_argument_errors_name_the_problem() -> None:
    ce = cl.get("cross_entropy")
    with pytest.raises(ValueError, match="rows of one length C >= 2"):
        check(ce, predictions=[(1.0, 2.0), (1.0, 2.0, 3.0)])
    with pytest.raises(ValueError, match="predictions must be rows of C values"):
        check(ce, predictions=[1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"class index 3 outside \[0, 3\) and not the ignore_index -100"
    ):
        check(ce, predictions=[(0.0, 0.0, 0.0)], targets=[3])
    with pytest.raises(ValueError, match="has 2 values; the predictions have C=3"):
        check(ce, predictions=[(0.0, 0.0, 0.0)], targets=[(0.5, 0.5)])
    with pytest.raises(ValueError, match="class index .int. or a probability row"):
        check(ce, predictions=[(0.0, 0.0, 0.0)], targets=[0.5])


def test_max_problems_bounds_the_work() -> None:
    naive = cl.define(
        "naive_ce_cap", "log(csum(exp(x))/csum(y*exp(x)))", inputs=("x", "y"), classes=True
    )
    report = check(naive, dtypes=["float32"], max_problems=3)
    assert len(report.problems) == 3 and report.stopped
    assert "stopped at max_problems" in report.summary()


def test_a_required_params_scan_starts_inside_its_domain() -> None:
    # (session-6 review) a required param started at 1.0 whatever its domain: every
    # result of check() was the domain refusal, not a defect of the loss
    from customloss import check

    student = cl.define(
        "student_chk",
        "log(1 + (p - y)**2 / nu)",
        inputs=("p", "y"),
        params={"nu": None},
        domains={"nu": "(2, inf)"},
    )
    sets = check._param_sets(student, None)
    assert sets and all(s["nu"] > 2 for s in sets)
    assert sets[0]["nu"] == min(v for v in check.PARAM_VALUES if v > 2)
    assert check._param_sets(student, {"nu": [3.0]})[0]["nu"] == 3.0
    narrow = cl.define(
        "narrow_chk",
        "k*(p - y)**2",
        inputs=("p", "y"),
        params={"k": None},
        domains={"k": "(1e9, 2e9)"},
    )
    with pytest.raises(ValueError, match=r"no value to try for the required param 'k'"):
        check._param_sets(narrow, None)
