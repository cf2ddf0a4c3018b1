"""customloss-example: the smallest complete customloss plugin."""

import customloss as cl


@cl.loss(references=("Keras: keras.losses.MeanSquaredLogarithmicError",))
def msle(p, y):
    r"""Squared logarithmic error, for targets spanning orders of magnitude.

    .. math:: \ell(p, y) = (\log(1 + p) - \log(1 + y))^2

    References:
        Keras, ``keras.losses.MeanSquaredLogarithmicError``.
    """
    return (cl.log1p(p) - cl.log1p(y)) ** 2


weighted_sq = cl.define(
    "weighted_sq",
    "(1 + (w_pos - 1) * y) * (p - y)**2",
    inputs=("p", "y"),
    params={"w_pos": 3.0},
    doc="Squared error in which positives (y = 1) count w_pos times.",
)


@cl.hookimpl
def register_losses(register):
    """Hand this plugin's losses to customloss."""
    register(msle)
    register(weighted_sq)
