"""User-defined class-axis losses: shapes, chain rule, NumPy == Torch, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import customloss as cl


@cl.loss(classes=True, params={"w": None})
def wce(z, y, w):
    return -cl.csum(w * y * cl.log_softmax(z))


@cl.loss(classes=True, params={"a": None, "g": 1.5})
def nested(z, y, a, g):
    """Exercises nested reductions, per-class and scalar params, cmax."""
    p = cl.softmax(z * a)
    return cl.csum(y * (1 - p) ** g) * cl.logsumexp(z - cl.cmax(z)) + cl.cmax(a * z) ** 2


W = [1.0, 2.0, 0.5, 4.0]


def test_issue_example_with_tensors_and_numpy():
    z = torch.randn(6, 4, dtype=torch.float64)
    t = torch.randint(0, 4, (6,))
    onehot = F.one_hot(t, 4).double()
    w = torch.tensor(W, dtype=torch.float64)
    ref = F.cross_entropy(z, t, weight=w, reduction="sum") / 6
    torch.testing.assert_close(wce(z, onehot, w=w), ref)
    torch.testing.assert_close(wce(z, t, w=w), ref)
    assert float(wce(z.numpy(), onehot.numpy(), w=np.array(W))) == pytest.approx(ref.item())
    assert float(wce(z.numpy(), t.numpy(), w=W)) == pytest.approx(ref.item())


def test_chain_rule_through_nested_reductions_gradcheck():
    z = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, 3, 2, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, y, a, g: nested(z, y, a=a, g=g), (z, y, a, g))
    t = torch.randint(0, 3, (5, 2))
    assert torch.autograd.gradcheck(
        lambda z, a, g: nested(z, t, a=a, g=g, reduction="sum"), (z, a, g)
    )


def _torch_nested(z, y, a, g):
    p = torch.softmax(z * a.view(1, -1, 1), 1)
    lse = torch.logsumexp(z - z.amax(1, keepdim=True), 1)
    return ((y * (1 - p) ** g).sum(1) * lse + (a.view(1, -1, 1) * z).amax(1) ** 2).mean()


def test_nested_value_and_gradient_against_torch_composite():
    z = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, 5, dtype=torch.float64)
    a = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ours, ref = nested(z, y, a=a), _torch_nested(z, y, a, 1.5)
    torch.testing.assert_close(ours, ref)
    (g1,) = torch.autograd.grad(ours, z)
    (g2,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g1, g2)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(2, 5),
    d=st.integers(1, 3),
    scale=st.floats(0.1, 20),
    index=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_numpy_equals_torch(n, c, d, scale, index, reduction):
    rng = np.random.default_rng(n * 100 + c * 10 + d)
    z = rng.normal(size=(n, c, d)) * scale
    t = rng.integers(0, c, size=(n, d))
    y = t if index else rng.dirichlet(np.ones(c), size=(n, d)).transpose(0, 2, 1)
    a = rng.uniform(0.2, 2.0, size=c)
    ours_np = nested(z, y, a=a, reduction=reduction)
    zt = torch.tensor(z, requires_grad=True)
    ours_t = nested(zt, torch.tensor(y), a=torch.tensor(a), reduction=reduction)
    np.testing.assert_allclose(np.asarray(ours_np), ours_t.detach().numpy(), rtol=1e-9, atol=1e-12)
    ours_t.sum().backward()
    g_np = nested.gradient(z, y, a=a, reduction="sum" if reduction == "none" else reduction)
    np.testing.assert_allclose(g_np, zt.grad.numpy(), rtol=1e-7, atol=1e-10)


def test_numpy_gradient_wrt_per_class_param_matches_finite_differences():
    rng = np.random.default_rng(3)
    z, t = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    w = np.array(W)
    got = wce.gradient(z, t, wrt="w", w=w, reduction="sum")
    eps = 1e-6
    fd = np.array(
        [
            (
                float(wce(z, t, w=w + eps * e, reduction="sum"))
                - float(wce(z, t, w=w - eps * e, reduction="sum"))
            )
            / (2 * eps)
            for e in np.eye(4)
        ]
    )
    np.testing.assert_allclose(got, fd, rtol=1e-6)


def test_definition_errors():
    with pytest.raises(
        ValueError, match="'z' has a class axis but is used outside a class reduction"
    ):

        @cl.loss(classes=True)
        def bad(z, y):
            return z + cl.csum(y)

    with pytest.raises(ValueError, match="not declared with classes=True"):

        @cl.loss()
        def bad2(z, y):
            return cl.csum(z * y)

    with pytest.raises(TypeError, match="unknown param .class_dim."):
        cl.define("e", "(p - y)**2", inputs=("p", "y"))(torch.zeros(2), torch.zeros(2), class_dim=1)


def test_define_string_with_class_functions():
    loss = cl.define("s", "-csum(y * log_softmax(z))", inputs=("z", "y"), classes=True)
    z = torch.randn(3, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (3,))
    torch.testing.assert_close(loss(z, t), F.cross_entropy(z, t))


def test_class_dim_zero_on_two_dimensional_input():
    z = torch.randn(5, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (5,))
    ref = F.cross_entropy(z, t)
    ce = cl.get("cross_entropy")
    torch.testing.assert_close(ce(z.T.contiguous(), t, class_dim=0), ref)
    assert float(ce(z.T.numpy(), t.numpy(), class_dim=0)) == pytest.approx(ref.item())


# --------------------------------------------------------------------------- review findings


def _index_and_onehot(loss: cl.Loss, z: torch.Tensor, t: torch.Tensor, ref) -> None:
    """The loss with index and one-hot targets equals torch autograd of ``ref``."""
    onehot = F.one_hot(t, z.shape[1]).to(z.dtype)
    zr = z.detach().clone().requires_grad_()
    want = ref(zr, onehot)
    want.backward()
    for target in (t, onehot):
        zz = z.detach().clone().requires_grad_()
        got = loss(zz, target, reduction="sum")
        got.backward()
        torch.testing.assert_close(got, want.detach())
        torch.testing.assert_close(zz.grad, zr.grad)


def test_a_condition_on_the_target_inside_csum_is_not_gathered() -> None:
    # d/dy where(y > 0.5, a, b) is 0, which made csum(where(...)) look linear in y and
    # the index-target kernel dropped the target (one-vs-all hinge: 4.0 instead of 0)
    @cl.loss(classes=True)
    def ova(z, y):
        return cl.csum(cl.where(y > 0.5, cl.relu(1 - z), cl.relu(1 + z)))

    z = torch.tensor([[3.0, -2.0, -2.0], [0.5, 0.2, -3.0]], dtype=torch.float64)
    _index_and_onehot(
        ova,
        z,
        torch.tensor([0, 1]),
        lambda z, y: torch.where(y > 0.5, torch.relu(1 - z), torch.relu(1 + z)).sum(),
    )


def test_abs_around_a_class_reduction_differentiates() -> None:
    @cl.loss(classes=True)
    def mae(z, y):
        return cl.csum(cl.abs(cl.softmax(z) - y))

    z = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _index_and_onehot(
        mae, z, torch.tensor([0, 1, 2, 3, 1]), lambda z, y: (torch.softmax(z, 1) - y).abs().sum()
    )


@pytest.mark.parametrize("k", [2.0, 0.5, 3.0])
def test_cmax_of_a_target_shifted_logit(k: float) -> None:
    # CMax.weight's Piecewise(Eq(u, cmax(u))) recursed forever in SymPy's Piecewise.eval
    loss = cl.define("m", f"cmax(z - {k}*y)", inputs=("z", "y"), classes=True)
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _index_and_onehot(loss, z, torch.tensor([0, 1, 2, 1]), lambda z, y: (z - k * y).amax(1).sum())


def test_param_gradients_through_the_index_mean() -> None:
    ce = cl.get("cross_entropy")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 2, 1, 0, 2])
    # label_smoothing is not in the mean's denominator: its gradient is supported
    eps = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ce(x, t, label_smoothing=eps).backward()
    eps_ref = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    lp = torch.log_softmax(x, 1)
    ((1 - eps_ref) * -lp.gather(1, t[:, None])[:, 0] + eps_ref * -lp.mean(1)).mean().backward()
    torch.testing.assert_close(eps.grad, eps_ref.grad)
    np.testing.assert_allclose(
        ce.gradient(x.numpy(), t.numpy(), wrt="label_smoothing", label_smoothing=0.1),
        eps_ref.grad.item(),
    )
    # class_weight is (sum_n w[y_n]): refused by both backends, not silently wrong
    w = np.array([0.5, 2.0, 1.0])
    with pytest.raises(NotImplementedError, match="'class_weight' through the weighted mean"):
        ce.gradient(x.numpy(), t.numpy(), wrt="class_weight", class_weight=w)
    with pytest.raises(NotImplementedError, match="'class_weight' through the weighted mean"):
        ce(x, t, class_weight=torch.tensor(w, requires_grad=True))


def test_variants_and_options_go_through_get_and_torch() -> None:
    # cl.get checked gamma against class_balanced's params before applying base="focal";
    # Loss.torch refused ignore_index
    focal_cb = cl.get("class_balanced", base="focal", gamma=2.0)
    assert focal_cb.name == "class_balanced_focal" and focal_cb.params["gamma"] == 2.0
    with pytest.raises(TypeError, match="unknown param 'gama'"):
        cl.get("class_balanced", base="focal", gama=2.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, generator=g)
    t = torch.tensor([0, 1, 255, 3, 0])
    module = cl.get("cross_entropy").torch(ignore_index=255, label_smoothing=0.1)
    torch.testing.assert_close(
        module(x, t), F.cross_entropy(x, t, ignore_index=255, label_smoothing=0.1)
    )


def test_a_wrong_sample_weight_names_the_per_sample_shape() -> None:
    with pytest.raises(ValueError, match=r"does not broadcast to the per-sample shape .* \(4,\)"):
        cl.get("cross_entropy")(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=torch.ones(3))


def test_multi_label_bce_written_with_p_t_is_stable_on_the_class_axis() -> None:
    loss = cl.define(
        "ml_pt",
        "csum(-log(y*sigmoid(z) + (1 - y)*(1 - sigmoid(z))))",
        inputs=("z", "y"),
        classes=True,
    )
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 4, generator=g) * 200  # float32: sigmoid(-200) underflows to 0
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    for target in (F.one_hot(t, 4).float(), t):
        z = z0.clone().requires_grad_()
        value = loss(z, target, reduction="sum")
        value.backward()
        zr = z0.clone().requires_grad_()
        ref = F.binary_cross_entropy_with_logits(zr, F.one_hot(t, 4).float(), reduction="sum")
        ref.backward()
        torch.testing.assert_close(value, ref.detach())
        torch.testing.assert_close(z.grad, zr.grad)


@pytest.mark.parametrize("offset", [0.0, 30.0, 1000.0, 1e4])
def test_float32_softmax_losses_keep_their_precision_at_large_logits(offset):
    # (session-6 review) z_y - clogsumexp(z) cancelled two numbers of size |z|: at a
    # common logit offset of 1e4 float32 cross-entropy was off by 4e-4 relative, where
    # F.cross_entropy computes (z_y - m) - log S. Reference: SciPy in float64 at the
    # same float32 inputs.
    import scipy.special

    rng = np.random.default_rng(0)
    z = (rng.normal(size=(64, 10)) + offset).astype(np.float32)
    idx = rng.integers(0, 10, 64)
    q = scipy.special.softmax(rng.normal(size=(64, 10)), axis=1).astype(np.float32)
    logp = scipy.special.log_softmax(z.astype(np.float64), axis=1)
    p = np.exp(logp)
    ce_idx = -logp[np.arange(64), idx]
    ce_prob = -(q * logp).sum(axis=1)
    g_idx = p.copy()
    g_idx[np.arange(64), idx] -= 1
    g_prob = p * q.sum(axis=1, keepdims=True) - q
    p_t = p[np.arange(64), idx]
    focal = (1 - p_t) ** 2 * ce_idx  # softmax focal loss (Lin et al.), gamma 2, alpha 1
    # LDAM (Cao et al. 2019): cross-entropy of s * (z - margin at the target class),
    # margins max_margin * n_j^(-1/4) / max_j n_j^(-1/4); s = 30 scales the logits
    counts = np.array([100.0, 50, 20, 10, 5, 4, 3, 2, 2, 1])
    margins = counts**-0.25
    margins = 0.5 * margins / margins.max()
    shifted = z.astype(np.float64)
    shifted[np.arange(64), idx] -= margins[idx]
    ldam = -scipy.special.log_softmax(30 * shifted, axis=1)[np.arange(64), idx]
    ce, sf, ld = cl.get("cross_entropy"), cl.get("softmax_focal"), cl.get("ldam")
    for backend in (np.asarray, torch.from_numpy):
        zz, ii, qq = backend(z), backend(idx), backend(q)
        for got, ref in (
            (ce(zz, ii, reduction="none"), ce_idx),
            (ce(zz, qq, reduction="none"), ce_prob),
            (sf(zz, ii, reduction="none"), focal),
            (ld(zz, ii, counts=backend(counts), reduction="none"), ldam),
        ):
            np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ce.gradient(z, idx, reduction="sum"), g_idx, rtol=0, atol=2e-7)
    np.testing.assert_allclose(ce.gradient(z, q, reduction="sum"), g_prob, rtol=0, atol=2e-7)
    x = torch.from_numpy(z).requires_grad_(True)
    ce(x, torch.from_numpy(idx), reduction="sum").backward()
    np.testing.assert_allclose(x.grad.numpy(), g_idx, rtol=0, atol=2e-7)


def test_a_nan_class_weight_stays_in_its_own_classs_samples():
    # (session-6 review) in the NumPy backend a NaN weight of class 0 made every
    # sample's cross-entropy NaN (0 * NaN in the label-smoothing term); as in torch
    # only the samples of class 0 are NaN
    rng = np.random.default_rng(0)
    z, idx = rng.normal(size=(4, 3)), np.array([0, 1, 2, 1])
    w = np.array([np.nan, 1.0, 2.0])
    ref = F.cross_entropy(
        torch.tensor(z), torch.tensor(idx), weight=torch.tensor(w), reduction="none"
    ).numpy()
    ce = cl.get("cross_entropy")
    for backend in (np.asarray, torch.tensor):
        got = np.asarray(ce(backend(z), backend(idx), class_weight=backend(w), reduction="none"))
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        assert np.isnan(got[0]) and np.isfinite(got[1:]).all()
    g = ce.gradient(z, idx, class_weight=w, reduction="sum")
    assert np.isnan(g[0]).all() and np.isfinite(g[1:]).all()


def test_ignore_index_with_probability_targets_is_refused_as_torch_does():
    # (session-6 parity review) it was silently unused: soft-label segmentation trained
    # on the pixels meant to be ignored
    z = torch.randn(4, 3)
    q = torch.softmax(torch.randn(4, 3), 1)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point"):
        F.cross_entropy(z, q, ignore_index=255)
    ce = cl.get("cross_entropy")
    for args in ((z, q), (z.numpy(), q.numpy())):
        with pytest.raises(ValueError, match="ignore_index=255 applies to class-index"):
            ce(*args, ignore_index=255)
    with pytest.raises(ValueError, match="ignore_index=255 applies to class-index"):
        ce.torch(ignore_index=255)(z, q)
    # the default is fine, and index targets keep it
    torch.testing.assert_close(ce(z, q), F.cross_entropy(z, q))
    t = torch.tensor([0, 255, 2, 1])
    torch.testing.assert_close(ce(z, t, ignore_index=255), F.cross_entropy(z, t, ignore_index=255))
