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


def _dwa_weights(prev: dict, prev2: dict, temperature: float = 2.0) -> dict:
    """Liu et al. 2019, eq. 1, written out."""
    r = {t: prev[t] / prev2[t] for t in prev}
    e = {t: math.exp(r[t] / temperature) for t in r}
    return {t: len(r) * e[t] / sum(e.values()) for t in r}


def test_dwa_counts_training_calls_only_and_resumes_from_a_state_dict():
    # per epoch: one training call (task a's loss 1, 4, 9; b's 1) and five evaluation
    # calls with a huge loss, under no_grad and in eval mode
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa")
    module = mt.torch()
    zero = torch.zeros(1)
    for a in (1.0, 2.0, 3.0):
        x = torch.tensor([a], requires_grad=True)
        module({"a": x, "b": torch.ones(1, requires_grad=True)}, {"a": zero, "b": zero})
        with torch.no_grad():
            for _ in range(5):
                module({"a": 100 * x, "b": 100 * torch.ones(1)}, {"a": zero, "b": zero})
        module.eval()
        for _ in range(5):
            module({"a": 100 * x, "b": 100 * torch.ones(1)}, {"a": zero, "b": zero})
        module.train()
        module.end_epoch()
    expected = _dwa_weights({"a": 9.0, "b": 1.0}, {"a": 4.0, "b": 1.0})
    got = mt.current_weights()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got["a"] > 1.2  # (the evaluation calls made it ~1.00002)
    state = module.state_dict()
    fresh = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa")
    fresh_module = fresh.torch()
    fresh_module.load_state_dict(state)
    assert fresh.current_weights() == pytest.approx(expected, rel=1e-12)
    # the uncertainty and fixed modules' state_dicts are unchanged (no extra key)
    assert (
        "_extra_state" not in cl.multitask({"a": MSE}, weighting="uncertainty").torch().state_dict()
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dwa_epoch_means_of_half_precision_losses_are_exact(dtype):
    # (session-6 review) the epoch sums were kept in the losses' dtype: 5000 steps of a
    # constant loss 1.0 recorded a mean of 0.41 in float16 and 0.05 in bfloat16
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa")
    one = torch.ones((), dtype=dtype, requires_grad=True)
    point3 = torch.tensor(0.3, dtype=dtype, requires_grad=True)
    for _ in range(5000):
        mt.combine({"a": one * 1, "b": point3 * 1})
    mt.end_epoch()
    means = mt.dwa_state()["history"][-1]
    assert means["a"] == pytest.approx(1.0, rel=1e-12)
    assert means["b"] == pytest.approx(float(point3), rel=1e-12)  # 0.3 rounded to dtype


def test_a_dwa_checkpoint_without_its_history_still_loads():
    # a state_dict from before the history was saved in it, strict loading
    module = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa").torch()
    module.load_state_dict({})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        module.load_state_dict({"nonsense": torch.zeros(1)})


def test_dwa_object_records_numpy_calls_and_can_be_told_not_to():
    mt = cl.multitask({"a": MSE, "b": MAE}, weighting="dwa")
    x0 = np.zeros(1)
    for a in (1.0, 2.0, 3.0):
        mt({"a": np.array([a]), "b": np.ones(1)}, {"a": x0, "b": x0})
        mt.combine({"a": 1e4, "b": 1e4}, record=False)
        mt.end_epoch()
    assert mt.current_weights() == pytest.approx(
        _dwa_weights({"a": 9.0, "b": 1.0}, {"a": 4.0, "b": 1.0}), rel=1e-12
    )
