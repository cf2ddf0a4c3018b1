"""Fast path for generated Torch kernels (hook point for compiled kernels).

``torch_backend`` asks :func:`kernel_callable` for the callable that runs a generated
kernel.  Today this is the eager kernel itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from customloss.codegen import Kernel

__all__ = ["kernel_callable"]


def kernel_callable(kernel: Kernel, args: tuple[Any, ...]) -> Callable[..., tuple[Any, ...]]:
    """The callable to run ``kernel`` on ``args`` (eager today)."""
    return kernel.fn
