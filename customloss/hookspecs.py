"""The hooks a customloss plugin implements.

A plugin is a module (or any object) with functions marked ``@customloss.hookimpl``.
It is found through the ``customloss`` entry-point group of its distribution::

    [project.entry-points.customloss]
    robust = "customloss_robust"

and loaded once, lazily, on the first use of the registry.  The built-in catalogue
(:mod:`customloss.builtin`) is a plugin like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = ["PROJECT_NAME", "RegisterLoss", "hookimpl", "hookspec", "register_losses"]

#: The pluggy project name; also the entry-point group plugins are found in.
PROJECT_NAME = "customloss"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterLoss(Protocol):
    """The ``register`` callback handed to :func:`register_losses`."""

    def __call__(self, loss: Loss, *, replace: bool = False) -> Loss:
        """Register ``loss`` under ``loss.name``; returns it.

        Raises:
            TypeError: ``loss`` is not a ``customloss.Loss``.
            ValueError: the name is taken (by a built-in, another plugin or this one)
                and ``replace`` is false; the message names both providers.
        """
        ...


@hookspec
def register_losses(register: RegisterLoss) -> None:
    """Register this plugin's losses by calling ``register(loss)`` once per loss.

    Build each loss with ``customloss.loss`` or ``customloss.define``; call
    ``register(loss, replace=True)`` only to override a loss of the same name on
    purpose.  Do not call ``customloss.register`` here: use the callback, so that the
    plugin's losses are added all together or, if this hook raises, not at all.

    Args:
        register: the callback; see :class:`RegisterLoss`.
    """
