"""customloss demo: design a loss as mathematics, inspect it, train with it.

Run with ``make demo``.
"""

from __future__ import annotations

import numpy as np
import torch

import customloss as cl


def weighted_loss_demo() -> None:
    print("=" * 72)
    print("1. A user-defined class-asymmetric weighted loss and its derived gradient")
    print("=" * 72)

    @cl.loss(params={"w_pos": 3.0})
    def weighted_sq(p, y, w_pos):
        """Squared error that weighs positives (y = 1) w_pos times more."""
        return (1 + (w_pos - 1) * y) * (p - y) ** 2

    print(weighted_sq.pretty())
    p = torch.tensor([0.2, 0.9, 0.4], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0])
    value = weighted_sq(p, y)
    value.backward()
    print(f"\nloss on p={[round(v, 4) for v in p.tolist()]}, y={y.tolist()}: {value.item():.4f}")
    print(f"autograd gradient: {[round(g, 4) for g in p.grad.tolist()]}")
    print("generated torch code:\n" + weighted_sq.source("torch"))


def cross_entropy_demo() -> None:
    print("=" * 72)
    print("2. Cross-entropy, cat 0.6 / dog 0.4, truth = cat")
    print("=" * 72)
    ce = cl.define(
        "ce_terms", "-y * log(q)", inputs=("q", "y"), doc="Per-class cross-entropy term -y log q."
    )
    q = np.array([0.6, 0.4])  # predicted probabilities: cat, dog
    y = np.array([1.0, 0.0])  # truth: cat
    value = ce(q, y, reduction="sum")
    print(f"-log 0.6 = {value:.4f}  ->  {value:.2f}")


def linear_regression_demo() -> None:
    print("=" * 72)
    print("3. Linear regression with an MSE written in the DSL, gradient descent")
    print("=" * 72)
    mse = cl.define("mse", "(p - y)**2", inputs=("p", "y"))
    print(f"loss: {mse.expr},  dloss/dp: {mse.grad()}")
    x = np.arange(1, 16, dtype=np.float64)
    y = 1.04 * x - 0.1
    w = b = 0.0
    lr = 0.01
    for epoch in range(10_000):
        pred = w * x + b
        g = mse.gradient(pred, y)  # d mean-loss / d pred, from the symbolic derivative
        w -= lr * float(np.sum(g * x))
        b -= lr * float(np.sum(g))
        if epoch in (0, 99, 999, 9_999):
            print(
                f"epoch {epoch + 1:>6}: w = {w:.4f}, b = {b:.4f}, "
                f"loss = {float(mse(w * x + b, y)):.3e}"
            )
    print(f"fit: w = {w:.4f}, b = {b:.4f}   (truth: w = 1.04, b = -0.1)")


def stability_demo() -> None:
    print("=" * 72)
    print("4. Naive BCE written by a user stays finite at extreme logits")
    print("=" * 72)
    bce = cl.define(
        "naive_bce", "-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x)))", inputs=("x", "y")
    )
    x = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0])
    v = bce(x, y, reduction="none")
    v.sum().backward()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x.detach(), y, reduction="none")
    print(f"customloss : {v.tolist()}")
    print(f"torch BCE  : {ref.tolist()}")
    print(f"gradient   : {x.grad.tolist()}")


if __name__ == "__main__":
    weighted_loss_demo()
    cross_entropy_demo()
    linear_regression_demo()
    stability_demo()
