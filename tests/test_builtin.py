"""Tests for the built-in catalogue (customloss.builtin).

Every loss is checked for value AND gradient against an independent reference:
``torch.nn.functional`` where PyTorch has the loss, otherwise the closed form named in
the loss's docstring written directly in torch (gradients by autograd through it).
All in float64, with several param values, through both backends; logit losses also
at extreme logits, and the focal loss against the numbers printed in its paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import customloss as cl
from customloss import builtin
from customloss.registry import Registry

DT = torch.float64
EXTREME = [-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4]

REGISTRY = Registry(entry_points=list, strict=True, disabled=())


def catalogue(name: str, **defaults) -> cl.Loss:
    return REGISTRY.get(name, **defaults)


# ------------------------------------------------------------------ references
def ref_sigmoid_focal(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, reduction='none' (torchvision 0.19 source)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def ref_asl(x, y, gamma_pos, gamma_neg, clip, eps=1e-8):
    """The authors' AsymmetricLoss.forward (Ridnik et al. 2021), elementwise, unsummed."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    gamma = gamma_pos * y + gamma_neg * (1 - y)
    return -(loss * torch.pow(1 - pt, gamma))


def ref_asl_stable(x, y, gamma_pos, gamma_neg, clip):
    """ASL's formula (Ridnik et al. 2021, eqs. 4-6) without the eps clamp, logs from logits."""
    p = torch.sigmoid(x)
    if clip > 0:  # log(1 - p_m) = log(min(1 - p + clip, 1))
        log_1m_pm = torch.log(torch.clamp(torch.sigmoid(-x) + clip, max=1))
    else:
        log_1m_pm = F.logsigmoid(-x)
    p_m = torch.clamp(p - clip, min=0)
    return -(y * (1 - p) ** gamma_pos * F.logsigmoid(x) + (1 - y) * p_m**gamma_neg * log_1m_pm)


def ref_huber(p, y, delta):
    """Huber (1964), eq. 4, written out so that delta may be a tensor."""
    r = (p - y).abs()
    return torch.where(r <= delta, r**2 / 2, delta * (r - delta / 2))


def ref_smooth_l1(p, y, beta):
    """Girshick (2015), eq. 3, written out so that beta may be a tensor."""
    r = (p - y).abs()
    return torch.where(r < beta, r**2 / (2 * beta), r - beta / 2)


def ref_bce_with_logits(x, y, pos_weight):
    """torch's documented formula, written out so that pos_weight may require grad."""
    return -(pos_weight * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))


# name -> (list of param dicts, input kind, reference elementwise function)
CASES = {
    "mse": ([{}], "real", lambda p, y: F.mse_loss(p, y, reduction="none")),
    "mae": ([{}], "real", lambda p, y: F.l1_loss(p, y, reduction="none")),
    "huber": (
        [{}, {"delta": 0.5}, {"delta": 2.5}],
        "real",
        lambda p, y, delta=1.0: F.huber_loss(p, y, reduction="none", delta=delta),
    ),
    "smooth_l1": (
        [{}, {"beta": 0.0}, {"beta": 0.5}, {"beta": 2.0}],
        "real",
        lambda p, y, beta=1.0: F.smooth_l1_loss(p, y, reduction="none", beta=beta),
    ),
    "log_cosh": ([{}], "real", lambda p, y: torch.log(torch.cosh(p - y))),
    "quantile": (
        [{}, {"q": 0.1}, {"q": 0.9}],
        "real",
        lambda p, y, q=0.5: torch.maximum(q * (y - p), (q - 1) * (y - p)),
    ),
    "bce": ([{}], "prob", lambda p, y: F.binary_cross_entropy(p, y, reduction="none")),
    "bce_with_logits": (
        [{}, {"pos_weight": 0.5}, {"pos_weight": 3.0}],
        "logit",
        lambda x, y, pos_weight=1.0: F.binary_cross_entropy_with_logits(
            x, y, reduction="none", pos_weight=torch.as_tensor(pos_weight, dtype=x.dtype)
        ),
    ),
    "hinge": ([{}], "sign", lambda x, y: torch.clamp(1 - y * x, min=0)),
    "focal": (
        [
            {},
            {"alpha": -1.0},
            {"alpha": 0.5, "gamma": 0.5},
            {"alpha": 0.75, "gamma": 0.0},
            {"gamma": 3.5},
        ],
        "logit01",
        lambda x, y, alpha=0.25, gamma=2.0: ref_sigmoid_focal(x, y, alpha, gamma),
    ),
    "asymmetric": (
        [
            {},
            {"gamma_pos": 1.0},
            {"gamma_pos": 0.5, "gamma_neg": 2.0, "clip": 0.2},
            {"clip": 0.0},
        ],
        "logit01",
        lambda x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05: ref_asl(
            x, y, gamma_pos, gamma_neg, clip
        ),
    ),
    "poisson_nll": (
        [{}],
        "count",
        lambda x, y: F.poisson_nll_loss(x, y, log_input=True, full=False, reduction="none"),
    ),
}
DEFAULTS = {item.name: item.params for item in builtin.CATALOGUE}
PARAMETRISED = [
    pytest.param(name, params, id=f"{name}-{params}" if params else name)
    for name, (param_sets, _, _) in CASES.items()
    for params in param_sets
]


def make_data(kind: str, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "real":
        return torch.randn(n, generator=g, dtype=DT) * 3, torch.randn(n, generator=g, dtype=DT)
    if kind == "prob":  # away from 0 and 1, where torch clamps its gradient (see bce doc)
        p = torch.rand(n, generator=g, dtype=DT) * 0.98 + 0.01
        return p, torch.rand(n, generator=g, dtype=DT)
    if kind == "logit":  # soft targets
        return torch.randn(n, generator=g, dtype=DT) * 4, torch.rand(n, generator=g, dtype=DT)
    if kind == "logit01":
        x = torch.randn(n, generator=g, dtype=DT) * 4
        return x, (torch.rand(n, generator=g, dtype=DT) > 0.5).to(DT)
    if kind == "sign":
        x = torch.randn(n, generator=g, dtype=DT) * 2
        return x, torch.where(torch.rand(n, generator=g, dtype=DT) > 0.5, 1.0, -1.0).to(DT)
    if kind == "count":
        x = torch.randn(n, generator=g, dtype=DT)
        return x, torch.poisson(torch.full((n,), 3.0, dtype=DT), generator=g)
    raise AssertionError(kind)


def value_and_grad(fn, x, y, wrt_target: bool = False):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(wrt_target)
    value = fn(x, y)
    grads = torch.autograd.grad(value, (x, y) if wrt_target else (x,))
    return value.detach(), grads


# ------------------------------------------------------------------ values and grads
@pytest.mark.parametrize(("name", "params"), PARAMETRISED)
def test_value_and_gradient_match_the_reference(name, params):
    _, kind, ref = CASES[name]
    loss = catalogue(name)
    x, y = make_data(kind)
    ours_v, (ours_g,) = value_and_grad(lambda a, b: loss(a, b, **params), x, y)
    ref_v, (ref_g,) = value_and_grad(lambda a, b: ref(a, b, **params).mean(), x, y)
    torch.testing.assert_close(ours_v, ref_v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-10, atol=1e-14)
    # reductions and weights behave like the reference's
    w = torch.linspace(0.5, 2.0, x.numel(), dtype=DT)
    torch.testing.assert_close(loss(x, y, reduction="sum", **params), ref(x, y, **params).sum())
    torch.testing.assert_close(loss(x, y, reduction="none", **params), ref(x, y, **params))
    torch.testing.assert_close(
        loss(x, y, weight=w, **params), (w * ref(x, y, **params)).mean(), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize(("name", "params"), PARAMETRISED)
def test_the_numpy_backend_matches_the_reference(name, params):
    _, kind, ref = CASES[name]
    loss = catalogue(name)
    x, y = make_data(kind, seed=1)
    ref_v, (ref_g,) = value_and_grad(lambda a, b: ref(a, b, **params).mean(), x, y)
    value = loss(x.numpy(), y.numpy(), **params)
    assert isinstance(value, float | np.floating)
    assert float(value) == pytest.approx(ref_v.item(), rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(
        loss.gradient(x.numpy(), y.numpy(), **params), ref_g.numpy(), rtol=1e-10, atol=1e-14
    )


def test_defaults_from_get_equal_call_time_overrides():
    x, y = make_data("logit01")
    ref = ref_sigmoid_focal(x, y, 0.5, 1.0).mean()
    torch.testing.assert_close(catalogue("focal", alpha=0.5, gamma=1.0)(x, y), ref)
    torch.testing.assert_close(catalogue("focal")(x, y, alpha=0.5, gamma=1.0), ref)


@pytest.mark.parametrize("name", ["mse", "mae", "huber", "smooth_l1"])
def test_gradient_with_respect_to_the_target_matches_torch(name):
    _, kind, ref = CASES[name]
    loss = catalogue(name)
    x, y = make_data(kind, seed=2)
    _, ours = value_and_grad(lambda a, b: loss(a, b), x, y, wrt_target=True)
    _, theirs = value_and_grad(lambda a, b: ref(a, b).mean(), x, y, wrt_target=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("focal", {"alpha": 0.3, "gamma": 1.5}),
        ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 3.0, "clip": 0.1}),
        ("huber", {"delta": 1.5}),
        ("smooth_l1", {"beta": 0.7}),
        ("quantile", {"q": 0.3}),
        ("bce_with_logits", {"pos_weight": 2.0}),
    ],
)
def test_learnable_params_get_the_reference_gradient(name, params):
    _, kind, ref = CASES[name]
    loss = catalogue(name)
    x, y = make_data(kind, seed=3)

    def grads(fn):
        ts = {k: torch.tensor(v, dtype=DT, requires_grad=True) for k, v in params.items()}
        value = fn(x, y, **ts)
        return torch.autograd.grad(value, list(ts.values()))

    ref = {
        "huber": ref_huber,
        "smooth_l1": ref_smooth_l1,
        "bce_with_logits": ref_bce_with_logits,
    }.get(name, ref)
    ours = grads(lambda a, b, **ts: loss(a, b, **ts))
    theirs = grads(lambda a, b, **ts: ref(a, b, **ts).mean())
    assert len(ours) == len(theirs) == len(params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_bce_with_logits_accepts_a_per_class_pos_weight():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 3, generator=g, dtype=DT, requires_grad=True)
    y = (torch.rand(16, 3, generator=g, dtype=DT) > 0.5).to(DT)
    pos_weight = torch.tensor([0.5, 1.0, 4.0], dtype=DT)
    ours = catalogue("bce_with_logits")(x, y, pos_weight=pos_weight)
    theirs = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0], rtol=1e-10, atol=0
    )
    # a per-class default from the registry works the same, in both backends
    per_class = catalogue("bce_with_logits", pos_weight=[0.5, 1.0, 4.0])
    torch.testing.assert_close(per_class(x, y), theirs)
    assert float(per_class(x.detach().numpy(), y.numpy())) == pytest.approx(
        theirs.item(), rel=1e-12
    )


def test_log_cosh_is_stable_for_large_residuals():
    # log cosh r = |r| - log 2 + log(1 + exp(-2|r|)); beyond |r| = 40 the last term
    # is below 1e-34, and cosh itself overflows beyond |r| ~ 710.
    r = torch.tensor([-1e6, -800.0, -45.0, 45.0, 800.0, 1e6], dtype=DT, requires_grad=True)
    value = catalogue("log_cosh")(r, torch.zeros_like(r), reduction="none")
    torch.testing.assert_close(value.detach(), r.detach().abs() - math.log(2), rtol=1e-15, atol=0)
    (grad,) = torch.autograd.grad(value.sum(), r)
    torch.testing.assert_close(grad, torch.sign(r.detach()))  # d/dr log cosh r = tanh r


def test_bce_clamps_its_logs_at_minus_100_like_torch():
    p = torch.tensor([0.0, 1e-300, 1e-50, 1e-20, 0.5, 1 - 1e-12, 1.0], dtype=DT)
    for target in (0.0, 0.3, 1.0):
        y = torch.full_like(p, target)
        pp = p.clone().requires_grad_(True)
        ours = catalogue("bce")(pp, y, reduction="none")
        torch.testing.assert_close(
            ours.detach(), F.binary_cross_entropy(p, y, reduction="none"), rtol=1e-12, atol=0
        )
        (grad,) = torch.autograd.grad(ours.sum(), pp)
        assert torch.isfinite(grad).all(), grad
        # Exact derivative: -y/p + (1-y)/(1-p) where the log is not clamped, 0 where it is.
        d_pos = torch.where(p > math.exp(-100), -target / p, torch.zeros_like(p))
        d_neg = torch.where(1 - p > math.exp(-100), (1 - target) / (1 - p), torch.zeros_like(p))
        torch.testing.assert_close(grad, d_pos + d_neg, rtol=1e-12, atol=0)


# --------------------------------------------------------------------- extreme logits
EXTREME_CASES = [
    ("bce_with_logits", {}),
    ("bce_with_logits", {"pos_weight": 3.0}),
    ("focal", {}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"alpha": -1.0, "gamma": 0.2}),
    ("focal", {"gamma": 0.0}),
    ("asymmetric", {}),
    ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5}),
    ("asymmetric", {"clip": 0.0}),
    ("asymmetric", {"clip": 0.0, "gamma_neg": 0.3}),
    ("hinge", {}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "params"), EXTREME_CASES)
def test_extreme_logits_give_finite_values_and_gradients(name, params, dtype):
    loss = catalogue(name)
    _, kind, ref = CASES[name]
    targets = (-1.0, 1.0) if kind == "sign" else (0.0, 1.0)
    for target in targets:
        x = torch.tensor(EXTREME, dtype=dtype, requires_grad=True)
        y = torch.full_like(x, target).detach()
        value = loss(x, y, reduction="none", **params)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.isfinite(value).all(), (target, value)
        assert torch.isfinite(grad).all(), (target, grad)
        # values: the float64 reference is accurate at these logits (its logs come from
        # logits); the authors' ASL clamps log p at log(1e-8), so use its formula here
        ref = ref_asl_stable if name == "asymmetric" else ref
        expected = ref(x.detach().double(), y.double(), **{**DEFAULTS[name], **params})
        tol = (
            {"rtol": 1e-5, "atol": 1e-6}
            if dtype == torch.float32
            else {"rtol": 1e-9, "atol": 1e-12}
        )
        torch.testing.assert_close(value.detach().double(), expected, **tol)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("focal", {"alpha": 0.25, "gamma": 2.0}),
        ("focal", {"alpha": 0.6, "gamma": 0.5}),
        ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 3.0, "clip": 0.1}),
        ("asymmetric", {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.0}),
        ("bce_with_logits", {"pos_weight": 2.0}),
    ],
)
def test_param_gradients_at_extreme_logits_are_finite_and_correct(name, params):
    # Where the reference's autograd gives 0 * inf = nan (d/d gamma of q**gamma at
    # q = 0, i.e. q**gamma * log q), the true value is the limit 0.
    ref = {"asymmetric": ref_asl_stable, "bce_with_logits": ref_bce_with_logits}.get(
        name, CASES[name][2]
    )
    for target in (0.0, 1.0):
        x = torch.tensor(EXTREME, dtype=DT)
        y = torch.full_like(x, target)

        def grads(fn, x=x, y=y):
            ts = {k: torch.tensor(v, dtype=DT, requires_grad=True) for k, v in params.items()}
            return torch.autograd.grad(fn(x, y, **ts), list(ts.values()))

        ours = grads(lambda a, b, **ts: catalogue(name)(a, b, reduction="sum", **ts))
        theirs = [
            torch.nan_to_num(g, nan=0.0)
            for g in grads(lambda a, b, **ts: ref(a, b, **ts).nan_to_num(nan=0.0).sum())
        ]
        for a, b in zip(ours, theirs, strict=True):
            assert torch.isfinite(a), (target, ours)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("params", [{}, {"alpha": 0.4, "gamma": 0.5}, {"alpha": -1.0}])
def test_focal_gradient_limits_at_extreme_logits(params):
    # Far from the decision boundary the focal loss is linear in the logit:
    # y = 1, x -> -inf: loss ~ -alpha_t * x, so d/dx -> -alpha_t;
    # y = 0, x -> +inf: loss ~ (1 - alpha) * x, so d/dx -> (1 - alpha)_t.
    alpha = params.get("alpha", 0.25)
    a_pos, a_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    x = torch.tensor([-1e4, -100.0, 100.0, 1e4], dtype=DT, requires_grad=True)
    for target, where, limit in ((1.0, slice(0, 2), -a_pos), (0.0, slice(2, 4), a_neg)):
        value = catalogue("focal")(
            x, torch.full_like(x, target).detach(), reduction="none", **params
        )
        (grad,) = torch.autograd.grad(value.sum(), x)
        torch.testing.assert_close(grad[where], torch.full((2,), limit, dtype=DT))
        # and on the easy side the gradient vanishes
        other = slice(2, 4) if target == 1.0 else slice(0, 2)
        assert (grad[other].abs() < 1e-40).all()


def test_asymmetric_gradient_limits_at_extreme_logits():
    x = torch.tensor([-1e4, -100.0, 100.0, 1e4], dtype=DT, requires_grad=True)
    loss = catalogue("asymmetric")
    # y = 1, x -> -inf: -(1 - p)^g+ log p ~ -x, slope -1
    value = loss(x, torch.ones_like(x).detach(), reduction="none")
    torch.testing.assert_close(
        torch.autograd.grad(value.sum(), x)[0][:2], torch.tensor([-1.0] * 2, dtype=DT)
    )
    # y = 0, clip > 0, x -> +inf: p_m -> 1 - clip, the loss is constant: slope 0;
    # with clip = 0 it is -log(1 - p) ~ x: slope 1
    for clip, slope in ((0.05, 0.0), (0.0, 1.0)):
        value = loss(x, torch.zeros_like(x).detach(), reduction="none", clip=clip)
        grad = torch.autograd.grad(value.sum(), x)[0]
        torch.testing.assert_close(grad[2:], torch.tensor([slope] * 2, dtype=DT))
        if clip > 0:  # below the clip the negative term is exactly 0
            assert (grad[:2] == 0).all()
        else:  # -p^4 log(1 - p) ~ p^5 at x -> -inf: 0 at -1e4, 5 e^(-500) at -100
            torch.testing.assert_close(grad[:2], torch.tensor([0.0, 5 * math.exp(-500)], dtype=DT))


def test_asymmetric_sum_reproduces_the_authors_module():
    # Their module returns -loss.sum(): our reduction="sum" is the same number.
    x, y = make_data("logit01", seed=5)
    ours = catalogue("asymmetric")(x, y, reduction="sum", gamma_pos=1.0)
    torch.testing.assert_close(ours, ref_asl(x, y, 1.0, 4.0, 0.05).sum())


# ------------------------------------------------------ published and seed numbers
@pytest.mark.parametrize(
    ("gamma", "p_t", "expected"),
    [(2.0, 0.5, 0.1733), (2.0, 0.9, 0.00105), (0.0, 0.5, 0.6931), (0.0, 0.9, 0.1054)],
)
def test_focal_reproduces_lin_et_al_figure_1(gamma, p_t, expected):
    # FL(p_t) = -(1 - p_t)^gamma log(p_t), no alpha: y = 1 and x = logit(p_t).
    x = torch.tensor([math.log(p_t / (1 - p_t))], dtype=DT)
    value = catalogue("focal")(x, torch.ones_like(x), alpha=-1.0, gamma=gamma)
    digits = len(f"{expected:.6g}".split(".")[1])
    assert round(value.item(), digits) == expected


def test_seed_formulas():
    # mse: mean (p - y)^2 = (0 + 1 + 4) / 3
    assert float(catalogue("mse")([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])) == pytest.approx(5 / 3)
    # cross-entropy, cat 0.6 / dog 0.4, truth cat: -log 0.6 = 0.51
    ce = float(catalogue("bce")(np.array([0.6, 0.4]), np.array([1.0, 0.0]), reduction="none")[0])
    assert round(ce, 2) == 0.51 and ce == pytest.approx(-math.log(0.6))
    # hinge: max(0, 1 - y f) = [0, 0.5, 0, 1.3] -> mean 0.45
    f, y = np.array([2.0, 0.5, -1.0, -0.3]), np.array([1.0, 1.0, -1.0, 1.0])
    assert float(catalogue("hinge")(f, y)) == pytest.approx(0.45)
    # focal: -alpha (1 - p)^2 log p at p = 0.9, y = 1, alpha = 0.25
    x = np.array([math.log(9.0)])
    expected = -0.25 * 0.1**2 * math.log(0.9)
    assert float(catalogue("focal")(x, np.array([1.0]))) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------- catalogue and documentation
def test_the_catalogue_is_the_issue_table():
    expected = {
        "mse": {},
        "mae": {},
        "huber": {"delta": 1.0},
        "smooth_l1": {"beta": 1.0},
        "log_cosh": {},
        "quantile": {"q": 0.5},
        "bce": {},
        "bce_with_logits": {"pos_weight": 1.0},
        "hinge": {},
        "focal": {"alpha": 0.25, "gamma": 2.0},
        "asymmetric": {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05},
        "poisson_nll": {},
    }
    assert {item.name: item.params for item in builtin.CATALOGUE} == expected
    assert set(CASES) == set(expected)
    for name in expected:
        info = REGISTRY.info(name)
        assert (info.plugin, info.distribution) == ("builtin", "customloss")


@pytest.mark.parametrize("item", builtin.CATALOGUE, ids=lambda item: item.name)
def test_every_builtin_documents_its_formula_and_references(item):
    assert ".. math::" in item.doc, "formula missing"
    assert "References:" in item.doc
    assert item.references and all(r.strip() for r in item.references)
    for param in item.params:
        assert f"{param}:" in item.doc, f"param {param!r} not documented"


def test_gradients_are_inspectable_plain_sympy():
    # d/dp (p - y)^2 = 2 (p - y); d/dx [exp(x) - y x] = exp(x) - y
    p, y, x = (sympy.Symbol(n, real=True) for n in "pyx")
    assert sympy.simplify(catalogue("mse").grad() - 2 * (p - y)) == 0
    assert sympy.simplify(catalogue("poisson_nll").grad() - (sympy.exp(x) - y)) == 0
    g = catalogue("focal").grad()
    fn = sympy.lambdify(sorted(g.free_symbols, key=lambda s: s.name), g, "math")
    # alpha, gamma, x, y  -> compare with the reference's autograd at one point
    xt = torch.tensor([0.7], dtype=DT, requires_grad=True)
    (ref,) = torch.autograd.grad(
        ref_sigmoid_focal(xt, torch.ones(1, dtype=DT), 0.25, 2.0).sum(), xt
    )
    assert fn(0.25, 2.0, 0.7, 1.0) == pytest.approx(ref.item(), rel=1e-12)


def test_huber_and_smooth_l1_second_derivatives_at_the_kink_equal_torchs():
    # at |r| = delta both branches give the same value and slope; the second
    # derivative is the linear branch's 0, as torch's kernel (|r| < delta quadratic)
    x = torch.tensor([0.0, 0.7, -0.7, 0.3, 2.0], dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.float64)
    for name, ref in (
        ("huber", lambda a: F.huber_loss(a, y, delta=0.7, reduction="sum")),
        ("smooth_l1", lambda a: F.smooth_l1_loss(a, y, beta=0.7, reduction="sum")),
    ):
        param = {"huber": {"delta": 0.7}, "smooth_l1": {"beta": 0.7}}[name]
        hessians = []
        for f in (
            lambda a, name=name, param=param: cl.get(name)(a, y, reduction="sum", **param),
            ref,
        ):
            a = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(a), a, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), a)
            hessians.append((g.detach(), h))
        torch.testing.assert_close(hessians[0][0], hessians[1][0], rtol=1e-12, atol=0)
        torch.testing.assert_close(hessians[0][1], hessians[1][1], rtol=1e-12, atol=0)
