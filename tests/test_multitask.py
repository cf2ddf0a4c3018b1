"""Multitask composition: fixed, uncertainty and DWA weighting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import customloss as cl
from customloss.builtin_classes import cross_entropy

MSE = cl.define("mt_mse", "(p - y)**2", inputs=("p", "y"))
MAE = cl.define("mt_mae", "abs(p - y)", inputs=("p", "y"))


def test_fixed_weights_combine_reduced_task_losses():
    mt = cl.multitask({"depth": MSE, "seg": cross_entropy}, weights={"depth": 1.0, "seg": 0.5})
    d, dt = torch.randn(4, 5), torch.randn(4, 5)
    z, t = torch.randn(4, 3, 5), torch.randint(0, 3, (4, 5))
    t[0, 0] = 255
    v = mt({"depth": d, "seg": z}, {"depth": dt, "seg": t}, seg={"ignore_index": 255})
    ref = F.mse_loss(d, dt) + 0.5 * F.cross_entropy(z, t, ignore_index=255)
    torch.testing.assert_close(v, ref)


def test_expr_and_gradient_of_uncertainty_weighting():
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="uncertainty")
    s_a, L_a = mt.symbols["s_a"], mt.symbols["L_a"]
    assert sympy.simplify(mt.grad("s_a") - (1 - sympy.exp(-s_a) * L_a)) == 0
    assert {s.name for s in mt.expr.free_symbols} == {"L_a", "L_b", "s_a", "s_b"}
    with pytest.raises(ValueError, match="no symbol 's_c'"):
        mt.grad("s_c")


def test_module_parameters_are_one_scalar_per_task_in_order():
    mt = cl.multitask({"b": MSE, "a": MAE, "c": MSE}, weighting="uncertainty")
    module = mt.torch()
    params = list(module.parameters())
    assert len(params) == 3 and all(p.shape == () and p.item() == 0.0 for p in params)
    assert [n.split(".")[-1] for n, _ in module.named_parameters()] == ["b", "a", "c"]
    x, t = torch.randn(6), torch.randn(6)
    with torch.no_grad():
        params[0].fill_(0.5)
    v = module({"b": x, "a": x, "c": x}, {"b": t, "a": t, "c": t})
    ref = (math.exp(-0.5) * F.mse_loss(x, t) + 0.5) + F.l1_loss(x, t) + F.mse_loss(x, t)
    torch.testing.assert_close(v, ref)
    v.backward()
    torch.testing.assert_close(params[0].grad, 1 - math.exp(-0.5) * F.mse_loss(x, t))


def test_multitask_object_callable_with_numpy_and_its_own_state():
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="uncertainty")
    x, t = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    assert float(mt({"a": x, "b": x}, {"a": t, "b": t})) == pytest.approx(2.5 + 1.5)
    mt.log_vars["a"] = math.log(2.0)
    assert float(mt({"a": x, "b": x}, {"a": t, "b": t})) == pytest.approx(
        2.5 / 2 + math.log(2.0) + 1.5
    )


def test_dwa_weights_follow_the_loss_ratio():
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa", temperature=2.0)
    x = np.array([1.0])
    for epoch_losses in ([4.0, 1.0], [2.0, 1.0]):
        assert mt.current_weights() == {"a": 1.0, "b": 1.0}
        pa = np.sqrt(epoch_losses[0])  # MSE(p, 0) = p^2
        mt({"a": pa * x, "b": epoch_losses[1] * x}, {"a": 0 * x, "b": 0 * x})
        mt.end_epoch()
    w = mt.current_weights()
    r_a, r_b = 2.0 / 4.0, 1.0 / 1.0
    e_a, e_b = math.exp(r_a / 2), math.exp(r_b / 2)
    assert w["a"] == pytest.approx(2 * e_a / (e_a + e_b))
    assert w["b"] == pytest.approx(2 * e_b / (e_a + e_b))


def test_bad_input_names_the_task():
    with pytest.raises(ValueError, match="unknown task 'c'"):
        cl.multitask({"a": MSE}, weights={"c": 1.0})
    with pytest.raises(ValueError, match="task 'a' is negative"):
        cl.multitask({"a": MSE}, weights={"a": -1.0})
    with pytest.raises(ValueError, match="unknown weighting 'magic'"):
        cl.multitask({"a": MSE}, weighting="magic")
    mt = cl.multitask({"a": MSE, "b": MAE})
    x = np.zeros(2)
    with pytest.raises(ValueError, match="task 'b' is in preds but not in targets"):
        mt({"a": x, "b": x}, {"a": x})
    with pytest.raises(ValueError, match="task 'a' is in targets but not in preds"):
        mt({"b": x}, {"a": x, "b": x})
    with pytest.raises(ValueError, match="unknown task 'z'"):
        mt({"a": x, "b": x, "z": x}, {"a": x, "b": x})
    with pytest.raises(ValueError, match="unknown task 'q'"):
        mt({"a": x, "b": x}, {"a": x, "b": x}, q={})


def test_uncertainty_weights_learn_log_noise_variance():
    """Two regression tasks with known noise: s_i -> log sigma_i^2 (Kendall et al.)."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 3, generator=g)
    sig = {"a": 0.5, "b": 2.0}
    ya = x @ torch.tensor([1.0, -2.0, 0.5]) + sig["a"] * torch.randn(n, generator=g)
    yb = x @ torch.tensor([0.3, 0.2, -1.0]) + sig["b"] * torch.randn(n, generator=g)
    model = torch.nn.Linear(3, 2)
    crit = cl.multitask({"a": MSE, "b": MSE}, weighting="uncertainty").torch()
    opt = torch.optim.Adam([*model.parameters(), *crit.parameters()], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        out = model(x)
        loss = crit({"a": out[:, 0], "b": out[:, 1]}, {"a": ya, "b": yb})
        loss.backward()
        opt.step()
    s = {t: p.item() for t, p in crit.log_vars.items()}
    assert s["a"] == pytest.approx(math.log(sig["a"] ** 2), abs=0.1)
    assert s["b"] == pytest.approx(math.log(sig["b"] ** 2), abs=0.1)


def test_a_non_scalar_task_loss_is_refused_not_broadcast() -> None:
    mt = cl.multitask({"a": cl.get("mse"), "b": cross_entropy})
    preds = {"a": torch.randn(4), "b": torch.randn(4, 3)}
    targets = {"a": torch.randn(4), "b": torch.tensor([0, 1, 2, 0])}
    want = F.mse_loss(preds["a"], targets["a"]) + F.cross_entropy(preds["b"], targets["b"])
    torch.testing.assert_close(mt(preds, targets), want)
    with pytest.raises(ValueError, match=r"task 'b': its loss has shape \(4,\)"):
        mt(preds, targets, b={"reduction": "none"})
