"""customloss: design loss functions as mathematics, get fast, stable, differentiable code.

The public API.  ``import customloss`` does not import torch.
"""

from __future__ import annotations

from customloss.dsl import (
    abs,
    cosh,
    exp,
    log,
    log1p,
    log_sigmoid,
    maximum,
    minimum,
    relu,
    sigmoid,
    softplus,
    sqrt,
    tanh,
    where,
)
from customloss.hookspecs import hookimpl
from customloss.loss import Loss, define, loss
from customloss.registry import PluginLoadWarning, get, info, names, register

__version__ = "0.1.0"

__all__ = [
    "Loss",
    "PluginLoadWarning",
    "__version__",
    "abs",
    "cosh",
    "define",
    "exp",
    "get",
    "hookimpl",
    "info",
    "log",
    "log1p",
    "log_sigmoid",
    "loss",
    "maximum",
    "minimum",
    "names",
    "register",
    "relu",
    "sigmoid",
    "softplus",
    "sqrt",
    "tanh",
    "where",
]
