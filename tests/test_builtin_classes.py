"""Class-axis built-ins against torch.nn.functional and hand-written formulas."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import customloss as cl
from customloss.builtin_classes import (
    categorical_crossentropy,
    class_balanced,
    cross_entropy,
    kl_div,
    ldam,
    poly1,
    softmax_focal,
)
from customloss.calculus import CSum

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(7, 5), (3, 4, 2, 3), (6,)]


def _logits(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def _index_target(shape, seed=1, ignore=None):
    c = shape[0] if len(shape) == 1 else shape[1]
    sample = () if len(shape) == 1 else (shape[0], *shape[2:])
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, c, sample, generator=g)
    if ignore is not None and t.dim() > 0:
        t.view(-1)[::3] = ignore
    return t


def _assert_same(ours, ref, x):
    torch.testing.assert_close(ours, ref)
    (g1,) = torch.autograd.grad(ours.sum(), x)
    (g2,) = torch.autograd.grad(ref.sum(), x, retain_graph=True)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_index_targets(shape, reduction, weighted, smoothing):
    z = _logits(shape)
    c = shape[0] if len(shape) == 1 else shape[1]
    t = _index_target(shape, ignore=-100 if len(shape) > 1 else None)
    w = torch.linspace(0.5, 2.0, c, dtype=torch.float64) if weighted else None
    ours = cross_entropy(z, t, class_weight=w, label_smoothing=smoothing, reduction=reduction)
    ref = F.cross_entropy(z, t, weight=w, label_smoothing=smoothing, reduction=reduction)
    _assert_same(ours, ref, z)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_probability_targets(shape, weighted, smoothing):
    z = _logits(shape)
    c = shape[0] if len(shape) == 1 else shape[1]
    p = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=0 if len(shape) == 1 else 1)
    w = torch.linspace(0.5, 2.0, c, dtype=torch.float64) if weighted else None
    ours = cross_entropy(z, p, class_weight=w, label_smoothing=smoothing)
    ref = F.cross_entropy(z, p, weight=w, label_smoothing=smoothing)
    _assert_same(ours, ref, z)


def test_cross_entropy_ignore_index_option_and_channels_last():
    z = _logits((4, 3, 5))
    t = _index_target((4, 3, 5), ignore=255)
    ref = F.cross_entropy(z, t, ignore_index=255)
    _assert_same(cross_entropy(z, t, ignore_index=255), ref, z)
    _assert_same(cl.Loss.with_defaults(cross_entropy, ignore_index=255)(z, t), ref, z)
    z_last = z.detach().movedim(1, -1).contiguous().requires_grad_(True)
    ours = cross_entropy(z_last, t, ignore_index=255, class_dim=-1)
    torch.testing.assert_close(ours, ref)


def test_cross_entropy_gradient_reaches_class_weight():
    z = _logits((6, 4))
    p = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, w: cross_entropy(z, p, class_weight=w), (z, w))
    t = _index_target((6, 4))
    assert torch.autograd.gradcheck(
        lambda z, w: cross_entropy(z, t, class_weight=w, reduction="sum"), (z, w)
    )
    assert torch.autograd.gradgradcheck(
        lambda z: cross_entropy(z, t, class_weight=w.detach(), label_smoothing=0.1), (z,)
    )


def test_index_targets_are_gathered_not_one_hot():
    src = cross_entropy._class_kernel("torch", "index", ("z",), True).source
    assert "R.gather(" in src and "onehot" not in src
    assert "onehot" in ldam._class_kernel("torch", "index", (), True).source


def test_categorical_crossentropy_seed_example():
    v = categorical_crossentropy(np.array([0.6, 0.4]), np.array([1.0, 0.0]))
    assert float(v) == pytest.approx(-np.log(0.6)) and round(float(v), 2) == 0.51
    q = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    y = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    assert float(categorical_crossentropy(q, y)) == pytest.approx(
        np.mean(-np.sum(y * np.log(q), axis=1))
    )
    assert float(categorical_crossentropy(q, np.array([1, 0]))) == pytest.approx(
        np.mean([-np.log(0.5), -np.log(0.9)])
    )


def test_kl_div_equals_torch_batchmean_with_zero_targets():
    q = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1).requires_grad_(True)
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    p[0] = torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    ours = kl_div(q, p)
    ref = F.kl_div(q.log(), p, reduction="batchmean")
    _assert_same(ours, ref, q)


def _softmax_focal_ref(z, t, alpha, gamma):
    logp = F.log_softmax(z, 1)
    logp_t = logp.gather(1, t[:, None])[:, 0]
    a_t = alpha[t] if alpha is not None else 1.0
    return (-a_t * (1 - logp_t.exp()) ** gamma * logp_t).mean()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("use_alpha", [False, True])
def test_softmax_focal_against_formula(gamma, use_alpha):
    z = _logits((8, 5))
    t = _index_target((8, 5))
    alpha = torch.linspace(0.2, 1.0, 5, dtype=torch.float64) if use_alpha else None
    ref = _softmax_focal_ref(z, t, alpha, gamma)
    _assert_same(softmax_focal(z, t, alpha=alpha, gamma=gamma), ref, z)
    onehot = F.one_hot(t, 5).double()
    _assert_same(softmax_focal(z, onehot, alpha=alpha, gamma=gamma), ref, z)
    if gamma == 0.0 and not use_alpha:
        torch.testing.assert_close(ref, F.cross_entropy(z, t))


def test_poly1_against_formula():
    z = _logits((8, 5))
    t = _index_target((8, 5))
    p_t = torch.softmax(z, 1).gather(1, t[:, None])[:, 0]
    ref = (F.cross_entropy(z, t, reduction="none") + 2.0 * (1 - p_t)).mean()
    _assert_same(poly1(z, t, epsilon=2.0), ref, z)


def test_class_balanced_weights_and_bases():
    counts = torch.tensor([1000.0, 100.0, 10.0, 2.0], dtype=torch.float64)
    beta = 0.99
    w = (1 - beta) / (1 - beta**counts)
    w = w / w.sum() * 4
    z = _logits((9, 4))
    t = _index_target((9, 4))
    ref = F.cross_entropy(z, t, weight=w, reduction="sum") / 9
    _assert_same(class_balanced("ce")(z, t, counts=counts, beta=beta), ref, z)
    onehot = F.one_hot(t, 4).double()
    # Cui et al. eq. 3 and the authors' code: every class term of a sample weighs w_y,
    # the weight of the sample's own class (their weights.repeat(...) * labels_one_hot
    # summed over classes, then repeated over the classes)
    w_y = w[t][:, None]
    bce = F.binary_cross_entropy_with_logits(z, onehot, reduction="none")
    ref_bce = (bce * w_y).sum(1).mean()
    _assert_same(class_balanced("bce")(z, onehot, counts=counts, beta=beta), ref_bce, z)
    _assert_same(class_balanced("bce")(z, t, counts=counts, beta=beta), ref_bce, z)
    p = torch.sigmoid(z)
    p_t = p * onehot + (1 - p) * (1 - onehot)
    ref_focal = (bce * (1 - p_t) ** 2 * w_y).sum(1).mean()
    _assert_same(class_balanced("focal")(z, onehot, counts=counts, beta=beta), ref_focal, z)
    _assert_same(class_balanced("focal")(z, t, counts=counts, beta=beta), ref_focal, z)
    with pytest.raises(ValueError, match="unknown base 'svm'"):
        class_balanced("svm")
    via_get = cl.get("class_balanced", base="focal", beta=beta)
    assert via_get.name == "class_balanced_focal" and via_get.params["beta"] == beta
    _assert_same(via_get(z, onehot, counts=counts), ref_focal, z)
    with pytest.raises(TypeError, match="missing required param.*'counts'"):
        class_balanced("ce")(z, t)


def test_ldam_against_formula():
    counts = torch.tensor([500.0, 50.0, 5.0], dtype=torch.float64)
    z = _logits((10, 3))
    t = _index_target((10, 3))
    m = counts**-0.25
    m = 0.5 * m / m.max()
    ref = F.cross_entropy(30.0 * (z - m[t][:, None] * F.one_hot(t, 3)), t)
    _assert_same(ldam(z, t, counts=counts), ref, z)
    _assert_same(ldam(z, F.one_hot(t, 3).double(), counts=counts), ref, z)


def test_cross_entropy_gradient_simplifies_to_softmax_minus_y():
    z, y = cross_entropy.symbols["z"], cross_entropy.symbols["y"]
    g = cross_entropy.grad().subs(
        {cross_entropy.symbols["class_weight"]: 1, cross_entropy.symbols["label_smoothing"]: 0}
    )
    g = g.xreplace({CSum(y): 1})
    assert sympy.simplify(g - (sympy.exp(z) / CSum(sympy.exp(z)) - y)) == 0


ALL = [cross_entropy, softmax_focal, poly1, ldam, class_balanced("ce"), class_balanced("focal")]


@pytest.mark.parametrize("loss", ALL, ids=lambda loss: loss.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", [True, False])
def test_extreme_logits_stay_finite(loss, dtype, device, index):
    z = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [0.0, 0.0, -1e4]],
        dtype=dtype,
        device=device,
        requires_grad=True,
    )
    t = torch.tensor([1, 0, 2], device=device)
    target = t if index else F.one_hot(t, 3).to(dtype)
    params = {"counts": torch.tensor([10.0, 5.0, 1.0])} if "counts" in loss.params else {}
    v = loss(z, target, **params)
    (g,) = torch.autograd.grad(v, z)
    assert torch.isfinite(v) and torch.isfinite(g).all()
    assert v.dtype == dtype and g.dtype == dtype


def test_errors_name_the_problem():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        cross_entropy(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"without the class axis \(dim 1\), i.e. \(4,\)"):
        cross_entropy(z, torch.tensor([[0], [1], [2], [0]]))
    with pytest.raises(ValueError, match=r"param 'class_weight' is per-class.*C=3"):
        cross_entropy(z, torch.tensor([0, 1, 2, 0]), class_weight=torch.ones(4))
    with pytest.raises(ValueError, match="class_dim=5 is out of range"):
        cross_entropy(z, torch.tensor([0, 1, 2, 0]), class_dim=5)
    with pytest.raises(ValueError, match="same shape"):
        cross_entropy(z, torch.rand(4, 2))
    with pytest.raises(TypeError, match="floating-point"):
        cross_entropy(torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 0]))


# ---------------------------------------------------------------------------
# label_smoothing passed as the number 0: the kernels drop the smoothing term
# ---------------------------------------------------------------------------
def _eager_smoothed_ce(z, t, w, ls):
    # hand-written reference: -sum_c w_c log softmax(z)_c (ls/C + (1-ls) [c == t]), summed
    logp = torch.log_softmax(z, dim=1)
    c = z.shape[1]
    q = ls / c + (1 - ls) * F.one_hot(t, c).to(z.dtype)
    return -(w * logp * q).sum()


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_gradient_at_zero(weighted):
    # a learnable label_smoothing at exactly 0 keeps its true gradient
    # (sum over samples of w_t log p_t - mean_c w_c log p_c), while the number 0 selects
    # the kernel without the smoothing term; both agree with torch autograd on the formula
    z = _logits((9, 4))
    t = _index_target((9, 4))
    w = (
        torch.linspace(0.5, 2.0, 4, dtype=torch.float64)
        if weighted
        else torch.ones(4, dtype=torch.float64)
    )
    ls = torch.zeros((), dtype=torch.float64, requires_grad=True)
    ours = cross_entropy(z, t, class_weight=w, label_smoothing=ls, reduction="sum")
    ref_ls = torch.zeros((), dtype=torch.float64, requires_grad=True)
    ref = _eager_smoothed_ce(z, t, w, ref_ls)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, (z, ls))
    g_ref = torch.autograd.grad(ref, (z, ref_ls))
    torch.testing.assert_close(g_ours, g_ref)
    assert abs(float(g_ref[1])) > 1e-3  # the check can fail: the gradient is not 0
    plain = cross_entropy(z, t, class_weight=w, label_smoothing=0.0, reduction="sum")
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(torch.autograd.grad(plain, z)[0], g_ref[0])


def test_zero_label_smoothing_kernel_skips_the_class_sum():
    kernel = cross_entropy._class_kernel(
        "torch", "index", ("z",), True, frozenset({"label_smoothing"})
    )
    general = cross_entropy._class_kernel("torch", "index", ("z",), True)
    assert "csum" not in kernel.source and "label_smoothing" not in kernel.source.split(":", 1)[1]
    assert "csum" in general.source


def test_zero_specialisation_falls_back_where_singular():
    # SymPy gives exp(-1/0**2) = nan, the runtime gives exp(-inf) = 0: the general
    # kernel serves a = 0
    loss = cl.define(
        "inv_ce",
        "-csum(y*log_softmax(z))*(1 + exp(-1/a**2))",
        inputs=("z", "y"),
        params={"a": 1.0},
        classes=True,
    )
    assert loss._zeroed(loss.expr, frozenset({"a"})) is None
    z = _logits((5, 3))
    t = _index_target((5, 3))
    ours = loss(z, t, a=0, reduction="sum")
    ref = F.cross_entropy(z, t, reduction="sum")
    _assert_same(ours, ref, z)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_backward_with_retain_graph(reduction):
    # the first backward scales the fused gradient in place; a second one must recompute
    z = _logits((6, 5))
    t = _index_target((6, 5), ignore=-100)
    ours = cross_entropy(z, t, reduction=reduction, label_smoothing=0.0).sum()
    ref = F.cross_entropy(z, t, reduction=reduction).sum()
    (g_ref,) = torch.autograd.grad(ref, z)
    (g1,) = torch.autograd.grad(ours, z, retain_graph=True)
    (g2,) = torch.autograd.grad(ours, z)
    torch.testing.assert_close(g1, g_ref)
    torch.testing.assert_close(g2, g_ref)


def _focal_reference(z, t, gamma):
    """d/dz and d/dgamma of -(1 - p_t)**gamma * log p_t, in mpmath at 50 digits."""
    import mpmath

    with mpmath.workdps(50):
        zs = [mpmath.mpf(float(v)) for v in z]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in zs))
        lpt = zs[t] - lse
        u = -mpmath.expm1(lpt)
        g = mpmath.mpf(gamma)
        # dL/dlog p_t = u**gamma * (gamma * p_t * log p_t / u - 1); log p_t / u -> -1
        ratio = lpt / u if u != 0 else mpmath.mpf(-1)
        d_lpt = u**g * (g * mpmath.exp(lpt) * ratio - 1)
        d_z = [d_lpt * ((1 if j == t else 0) - mpmath.exp(v - lse)) for j, v in enumerate(zs)]
        d_gamma = -(u**g) * mpmath.log(u) * lpt if u != 0 else mpmath.mpf(0)
        return [float(d) for d in d_z], float(d_gamma)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
@pytest.mark.parametrize("index", [True, False])
def test_softmax_focal_gradients_finite_as_p_t_tends_to_one(gamma, index):
    # float32 rounds 1 - p_t to 0 for the first rows: the derivative used to be
    # (1 - p_t)**gamma * 0/0 there (nan); the limit is finite (0 for gamma > 0).
    rows = [[1e4, 0, 0], [30.0, 0, 0], [20.0, -1, 3], [12.0, 0, 0], [5.0, 0, 0], [0.0, 0, 0]]
    z = torch.tensor(rows, dtype=torch.float32, requires_grad=True)
    t = torch.zeros(len(rows), dtype=torch.long)
    g = torch.tensor(gamma, dtype=torch.float32, requires_grad=True)
    target = t if index else F.one_hot(t, 3).float()
    cl.get("softmax_focal")(z, target, gamma=g, reduction="sum").backward()
    refs = [_focal_reference(r, 0, gamma) for r in z.detach().tolist()]
    want_z = torch.tensor([r[0] for r in refs], dtype=torch.float64)
    want_g = sum(r[1] for r in refs)
    assert torch.isfinite(z.grad).all() and torch.isfinite(g.grad)
    torch.testing.assert_close(z.grad.double(), want_z, atol=1e-6, rtol=1e-4)
    assert g.grad.item() == pytest.approx(want_g, rel=1e-4, abs=1e-6)
    grad_np = cl.get("softmax_focal").gradient(
        z.detach().numpy(), target.numpy(), gamma=gamma, reduction="sum"
    )
    assert np.isfinite(grad_np).all()
    np.testing.assert_allclose(grad_np, want_z.numpy(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.999])
def test_class_balanced_gradients_against_the_paper_formula(beta):
    # Cui et al. 2019 eq. 3 in eager torch; at beta = 0 the one-sided d/dbeta is not 0
    # when a class has count 1
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(6, 4, dtype=torch.float64, generator=g)
    t = torch.randint(0, 4, (6,), generator=g)
    counts0 = torch.tensor([1.0, 5.0, 50.0, 500.0], dtype=torch.float64)

    def paper(z, counts, b):
        w = (1 - b) / (1 - b**counts)
        w = w * 4 / w.sum()
        return -(w[t] * torch.log_softmax(z, 1).gather(1, t[:, None])[:, 0]).sum()

    args = [
        x.clone().requires_grad_() for x in (z0, counts0, torch.tensor(beta, dtype=torch.float64))
    ]
    ours = class_balanced("ce")(args[0], t, counts=args[1], beta=args[2], reduction="sum")
    refs = [
        x.clone().requires_grad_() for x in (z0, counts0, torch.tensor(beta, dtype=torch.float64))
    ]
    ref = paper(*refs)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, args), torch.autograd.grad(ref, refs))
