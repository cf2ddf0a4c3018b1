"""Deferred imports: ``import customloss`` must stay cheap (SymPy alone takes ~0.4 s).

``sympy = LazyModule("sympy")`` behaves like the module but imports it on first
attribute access.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A module proxy that imports ``name`` on first attribute access."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = importlib.import_module(self._name)
            self._module = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


sympy: Any = LazyModule("sympy")
