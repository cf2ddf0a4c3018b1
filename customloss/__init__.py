"""customloss: design loss functions as mathematics, get fast, stable, differentiable code.

The public API.  ``import customloss`` does not import torch.
"""

from __future__ import annotations

from customloss.dsl import (
    abs,
    cmax,
    cosh,
    csum,
    exp,
    log,
    log1p,
    log_sigmoid,
    log_softmax,
    logsumexp,
    maximum,
    minimum,
    num_classes,
    relu,
    sigmoid,
    softmax,
    softplus,
    sqrt,
    tanh,
    where,
    xlogy,
)
from customloss.hookspecs import hookimpl
from customloss.loss import Loss, define, loss
from customloss.multitask import MultiTask, multitask
from customloss.registry import PluginLoadWarning, get, info, names, register

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `load` lives in customloss.serialize, which needs SymPy's printers at import time
    if name == "check":  # the module is callable: cl.check(loss)
        import importlib

        module = importlib.import_module("customloss.check")
        globals()["check"] = module
        return module
    if name == "load":
        from customloss.serialize import load

        globals()["load"] = load
        return load
    raise AttributeError(f"module 'customloss' has no attribute {name!r}")


__all__ = [
    "Loss",
    "MultiTask",
    "PluginLoadWarning",
    "__version__",
    "abs",
    "check",
    "cmax",
    "cosh",
    "csum",
    "define",
    "exp",
    "get",
    "hookimpl",
    "info",
    "log",
    "log1p",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "load",
    "loss",
    "maximum",
    "minimum",
    "multitask",
    "names",
    "num_classes",
    "register",
    "relu",
    "sigmoid",
    "softmax",
    "softplus",
    "sqrt",
    "tanh",
    "where",
    "xlogy",
]
