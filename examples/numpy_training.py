"""NumPy-only training with customloss: the seed optimizers on the seed linear regression.

The loss is the mean squared error written in the DSL; its gradient comes from the
symbolic derivative through the NumPy backend (``Loss.gradient``), and the chain rule to
the model's weights is one line.  No torch is imported.

The optimizers are the seed documents' update rules, in NumPy:

* batch gradient descent and minibatch SGD: ``theta -= eta * g``;
* momentum: ``v = gamma * v + eta * g; theta -= v``;
* Adagrad: ``G += g**2; theta -= eta * g / (sqrt(G) + eps)``;
* RMSprop: ``E = rho * E + (1 - rho) * g**2; theta -= eta * g / (sqrt(E) + eps)``;
* Adam: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``, bias-corrected
  ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``;
  ``theta -= eta * m_hat / (sqrt(v_hat) + eps)``.

Where ``eps`` goes: the seed documents write Adagrad and RMSprop with ``eps`` inside the
square root (``sqrt(G + eps)``); ``torch.optim`` adds it outside (``sqrt(G) + eps``),
as Adam does in both.  ``eps_in_sqrt=False`` (the default) follows torch, so the
trajectories equal ``torch.optim``'s (checked in ``tests/test_examples.py``);
``eps_in_sqrt=True`` gives the seed documents' form.  The two differ only while ``G``
is of the order of ``eps``.

Run::

    python examples/numpy_training.py --out optimizers.png

It reproduces the seed result (batch gradient descent, learning rate 0.01, 10000 epochs
from ``w = b = 0``: ``w = 1.0400, b = -0.1000``) and writes a plot of the loss per
epoch for every optimizer (needs matplotlib; skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import customloss as cl

#: The seed's loss, written in the DSL: elementwise ``(p - y)**2``, mean-reduced.
MSE = cl.define("mse", "(p - y)**2", inputs=("p", "y"), doc="Squared error.")


def seed_data() -> tuple[np.ndarray, np.ndarray]:
    """The seed linear regression: ``x = 1..15``, ``y = 1.04 x - 0.1``."""
    x = np.arange(1, 16, dtype=np.float64)
    return x, 1.04 * x - 0.1


class Optimizer:
    """Updates a list of float64 arrays in place from their gradients."""

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """One update of every array in ``params`` (in place)."""
        raise NotImplementedError


@dataclass
class GradientDescent(Optimizer):
    """``theta -= lr * g``: batch gradient descent, or SGD on minibatch gradients.

    Args:
        lr: the learning rate ``eta``.
    """

    lr: float = 0.01

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        for p, g in zip(params, grads, strict=True):
            p -= self.lr * g


@dataclass
class Momentum(Optimizer):
    """``v = gamma v + lr g; theta -= v`` (Qian 1999).

    Equals ``torch.optim.SGD(lr=lr, momentum=gamma)`` (``dampening=0``), whose buffer is
    ``b = gamma b + g`` with ``theta -= lr b``: by linearity ``v = lr b`` at every step.

    Args:
        lr: the learning rate ``eta``.
        gamma: the momentum term.
    """

    lr: float = 0.01
    gamma: float = 0.9
    _v: list[np.ndarray] = field(default_factory=list, repr=False)

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._v:
            self._v = [np.zeros_like(p) for p in params]
        for p, g, v in zip(params, grads, self._v, strict=True):
            v *= self.gamma
            v += self.lr * g
            p -= v


@dataclass
class Adagrad(Optimizer):
    """``G += g**2; theta -= lr g / (sqrt(G) + eps)`` (Duchi et al. 2011).

    Args:
        lr: the learning rate.
        eps: added to the root (torch's default 1e-10).
        eps_in_sqrt: the seed documents' ``sqrt(G + eps)`` instead.
    """

    lr: float = 0.01
    eps: float = 1e-10
    eps_in_sqrt: bool = False
    _sum: list[np.ndarray] = field(default_factory=list, repr=False)

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._sum:
            self._sum = [np.zeros_like(p) for p in params]
        for p, g, s in zip(params, grads, self._sum, strict=True):
            s += g * g
            p -= self.lr * g / _root(s, self.eps, self.eps_in_sqrt)


@dataclass
class RMSprop(Optimizer):
    """``E = rho E + (1 - rho) g**2; theta -= lr g / (sqrt(E) + eps)`` (Hinton 2012).

    Args:
        lr: the learning rate.
        rho: decay of the running average (torch's ``alpha``, default 0.99; the seed
            documents suggest 0.9).
        eps: added to the root (torch's default 1e-8).
        eps_in_sqrt: the seed documents' ``sqrt(E + eps)`` instead.
    """

    lr: float = 0.01
    rho: float = 0.99
    eps: float = 1e-8
    eps_in_sqrt: bool = False
    _avg: list[np.ndarray] = field(default_factory=list, repr=False)

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._avg:
            self._avg = [np.zeros_like(p) for p in params]
        for p, g, e in zip(params, grads, self._avg, strict=True):
            e *= self.rho
            e += (1 - self.rho) * g * g
            p -= self.lr * g / _root(e, self.eps, self.eps_in_sqrt)


@dataclass
class Adam(Optimizer):
    """Adam with bias correction (Kingma and Ba 2015, algorithm 1).

    Args:
        lr: the learning rate.
        beta1: decay of the first moment.
        beta2: decay of the second moment.
        eps: added to ``sqrt(v_hat)``.
    """

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    _m: list[np.ndarray] = field(default_factory=list, repr=False)
    _v: list[np.ndarray] = field(default_factory=list, repr=False)
    _t: int = 0

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._m:
            self._m = [np.zeros_like(p) for p in params]
            self._v = [np.zeros_like(p) for p in params]
        self._t += 1
        for p, g, m, v in zip(params, grads, self._m, self._v, strict=True):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1**self._t)
            v_hat = v / (1 - self.beta2**self._t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _root(s: np.ndarray, eps: float, inside: bool) -> np.ndarray:
    return np.sqrt(s + eps) if inside else np.sqrt(s) + eps


def gradients(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """d mean((w x + b - y)**2) / d(w, b), from the loss's symbolic derivative."""
    g = MSE.gradient(w * x + b, y)  # d loss / d prediction, mean-reduced
    return np.sum(g * x, keepdims=True).reshape(w.shape), np.sum(g).reshape(b.shape)


def batches(n: int, batch_size: int | None, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of one epoch: everything (``batch_size=None``) or shuffled minibatches."""
    if batch_size is None or batch_size >= n:
        yield np.arange(n)
        return
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@dataclass
class History:
    """What :func:`train` recorded: ``w``, ``b`` after every step and the loss per epoch."""

    w: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def train(
    optimizer: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int | None = None,
    seed: int = 0,
    w0: float = 0.0,
    b0: float = 0.0,
) -> History:
    """Fit ``y ~ w x + b`` with the MSE loss and ``optimizer``.

    Args:
        optimizer: one of the optimizers above.
        x, y: the data.
        epochs: passes over the data.
        batch_size: None for batch gradient descent, else minibatches (shuffled every
            epoch with ``numpy.random.default_rng(seed)``).
        seed: seed of the shuffling.
        w0, b0: the starting point.

    Returns:
        The :class:`History`: ``w``/``b`` after each step, the full-data loss after each
        epoch.
    """
    w, b = np.array([w0]), np.array([b0])
    rng = np.random.default_rng(seed)
    history = History()
    for _ in range(epochs):
        for idx in batches(x.size, batch_size, rng):
            gw, gb = gradients(w, b, x[idx], y[idx])
            optimizer.step([w, b], [gw, gb])
            history.w.append(float(w[0]))
            history.b.append(float(b[0]))
        history.loss.append(float(MSE(w * x + b, y)))
    return history


#: The optimizers compared in the plot, with learning rates that suit this problem
#: (the Hessian of the MSE in ``(w, b)`` is ``2 [[mean(x**2), mean(x)], [mean(x), 1]]``,
#: whose largest eigenvalue is 166.89, so plain gradient descent needs
#: ``eta < 2 / 166.89 = 0.01198``).
COMPARISON: dict[str, tuple[Optimizer, int | None]] = {
    "batch gradient descent (eta 0.01)": (GradientDescent(lr=0.01), None),
    "minibatch SGD (eta 0.005, batch 5)": (GradientDescent(lr=0.005), 5),
    "momentum (eta 0.002, gamma 0.9)": (Momentum(lr=0.002, gamma=0.9), None),
    "Adagrad (eta 0.5)": (Adagrad(lr=0.5), None),
    "RMSprop (eta 0.01)": (RMSprop(lr=0.01), None),
    "Adam (eta 0.05)": (Adam(lr=0.05), None),
}


def plot_convergence(histories: dict[str, History], path: Path) -> bool:
    """Loss per epoch of each optimizer, log scale; False if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, h in histories.items():
        ax.semilogy(np.arange(1, len(h.loss) + 1), h.loss, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE on the 15 points")
    ax.set_title("y = 1.04 x - 0.1: the seed optimizers in NumPy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """Reproduce the seed regression, then compare the optimizers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="optimizers.png", help="convergence plot file")
    parser.add_argument("--epochs", type=int, default=2000, help="epochs of the comparison")
    args = parser.parse_args(argv)

    x, y = seed_data()
    print(f"loss: {MSE.expr},  dloss/dp: {MSE.grad()}")
    seed = train(GradientDescent(lr=0.01), x, y, epochs=10_000)
    print(f"batch gradient descent, 10000 epochs: w = {seed.w[-1]:.4f}, b = {seed.b[-1]:.4f}")
    print("  (seed: w = 1.0400, b = -0.1000)")

    histories = {}
    for name, (optimizer, batch_size) in COMPARISON.items():
        h = train(optimizer, x, y, epochs=args.epochs, batch_size=batch_size)
        histories[name] = h
        print(f"{name:<36} w = {h.w[-1]:.4f}  b = {h.b[-1]:+.4f}  loss = {h.loss[-1]:.2e}")
    if plot_convergence(histories, Path(args.out)):
        print(f"wrote {args.out}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
