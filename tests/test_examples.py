"""examples/numpy_training.py: the NumPy optimizers equal torch.optim, the seed result holds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numpy_training.py"
STEPS = 100


def _load_example():
    spec = importlib.util.spec_from_file_location("numpy_training", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["numpy_training"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


nt = _load_example()


def _torch_trajectory(make_optimizer, batch_size=None, steps=STEPS, seed=0):
    """(w, b) after each step of torch.optim on the seed regression, float64."""
    torch = pytest.importorskip("torch")
    x_np, y_np = nt.seed_data()
    x, y = torch.tensor(x_np), torch.tensor(y_np)
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([w, b])
    rng = np.random.default_rng(seed)
    ws, bs = [], []
    while len(ws) < steps:
        for idx in nt.batches(x.numel(), batch_size, rng):
            i = torch.as_tensor(idx)
            opt.zero_grad()
            loss = torch.mean((w * x[i] + b - y[i]) ** 2)  # independent of customloss
            loss.backward()
            opt.step()
            ws.append(w.item())
            bs.append(b.item())
    return np.array(ws[:steps]), np.array(bs[:steps])


def _numpy_trajectory(optimizer, batch_size=None, steps=STEPS, seed=0):
    x, y = nt.seed_data()
    per_epoch = 1 if batch_size is None else -(-x.size // batch_size)
    h = nt.train(optimizer, x, y, epochs=-(-steps // per_epoch), batch_size=batch_size, seed=seed)
    return np.array(h.w[:steps]), np.array(h.b[:steps])


CASES = {
    "batch gradient descent": (
        lambda: nt.GradientDescent(lr=0.01),
        lambda torch, p: torch.optim.SGD(p, lr=0.01),
        None,
    ),
    "minibatch SGD": (
        lambda: nt.GradientDescent(lr=0.005),
        lambda torch, p: torch.optim.SGD(p, lr=0.005),
        4,
    ),
    "momentum": (
        lambda: nt.Momentum(lr=0.002, gamma=0.9),
        lambda torch, p: torch.optim.SGD(p, lr=0.002, momentum=0.9, dampening=0.0),
        None,
    ),
    "momentum, minibatches": (
        lambda: nt.Momentum(lr=0.001, gamma=0.8),
        lambda torch, p: torch.optim.SGD(p, lr=0.001, momentum=0.8),
        5,
    ),
    "Adagrad": (
        lambda: nt.Adagrad(lr=0.5, eps=1e-10),
        lambda torch, p: torch.optim.Adagrad(p, lr=0.5, eps=1e-10),
        None,
    ),
    "RMSprop": (
        lambda: nt.RMSprop(lr=0.01, rho=0.9, eps=1e-8),
        lambda torch, p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8),
        None,
    ),
    "Adam": (
        lambda: nt.Adam(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-8),
        lambda torch, p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-8),
        None,
    ),
    "Adam, minibatches": (
        lambda: nt.Adam(lr=0.01),
        lambda torch, p: torch.optim.Adam(p, lr=0.01),
        3,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_numpy_optimizer_follows_torch_optim(case):
    torch = pytest.importorskip("torch")
    ours, theirs, batch_size = CASES[case]
    w, b = _numpy_trajectory(ours(), batch_size)
    tw, tb = _torch_trajectory(lambda p: theirs(torch, p), batch_size)
    assert len(w) == len(tw) == STEPS
    # the trajectories move (a test of equal constants would prove nothing)
    assert np.ptp(tw) > 0.05 and np.ptp(tb) > 1e-3
    np.testing.assert_allclose(w, tw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b, tb, rtol=0, atol=1e-6)


def test_eps_placement_is_what_tells_seed_and_torch_forms_apart():
    torch = pytest.importorskip("torch")
    # with a large eps the two placements give visibly different trajectories
    tw, _ = _torch_trajectory(lambda p: torch.optim.Adagrad(p, lr=0.5, eps=1.0))
    outside, _ = _numpy_trajectory(nt.Adagrad(lr=0.5, eps=1.0))
    inside, _ = _numpy_trajectory(nt.Adagrad(lr=0.5, eps=1.0, eps_in_sqrt=True))
    np.testing.assert_allclose(outside, tw, atol=1e-6)
    assert np.max(np.abs(inside - tw)) > 1e-3
    # the seed form, first step by hand: theta = -lr g / sqrt(g**2 + eps)
    x, y = nt.seed_data()
    g_w = np.mean(2 * (0 * x + 0 - y) * x)
    assert inside[0] == pytest.approx(-0.5 * g_w / np.sqrt(g_w**2 + 1.0), rel=1e-12)
    rms_in, _ = _numpy_trajectory(nt.RMSprop(lr=0.01, rho=0.9, eps=1.0, eps_in_sqrt=True))
    g_sq = 0.1 * g_w**2
    assert rms_in[0] == pytest.approx(-0.01 * g_w / np.sqrt(g_sq + 1.0), rel=1e-12)


def test_gradients_are_the_mse_chain_rule():
    x, y = nt.seed_data()
    w, b = np.array([0.3]), np.array([-0.2])
    gw, gb = nt.gradients(w, b, x, y)
    r = w * x + b - y
    np.testing.assert_allclose(gw, [np.mean(2 * r * x)], rtol=1e-12)
    np.testing.assert_allclose(gb, [np.mean(2 * r)], rtol=1e-12)


def test_minibatches_cover_every_point_once_per_epoch():
    rng = np.random.default_rng(0)
    batches = list(nt.batches(15, 4, rng))
    assert [len(i) for i in batches] == [4, 4, 4, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(15))
    assert [len(i) for i in nt.batches(15, None, rng)] == [15]


def test_example_reproduces_the_seed_regression_without_torch(tmp_path):
    out = tmp_path / "optimizers.png"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['numpy_training.py', '--out', {str(out)!r}, '--epochs', '300']\n"
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    text = result.stdout
    assert re.search(r"10000 epochs: w = 1\.0400, b = -0\.1000", text), text
    assert "torch imported: False" in text
    for name in nt.COMPARISON:
        assert name in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in text
    else:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
