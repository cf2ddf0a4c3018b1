"""Argument checks shared by the backends; every check runs before any computation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: object) -> str:
    """Return ``reduction`` if valid, else raise ``ValueError`` listing the valid ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduction!r}; valid reductions are "
            + ", ".join(repr(r) for r in REDUCTIONS)
        )
    return reduction  # type: ignore[return-value]


def check_same_shape(input_shape: Sequence[int], target_shape: Sequence[int]) -> None:
    """Refuse (rather than broadcast) an input/target shape mismatch."""
    if tuple(input_shape) != tuple(target_shape):
        raise ValueError(
            f"input and target must have the same shape; got input shape "
            f"{tuple(input_shape)} and target shape {tuple(target_shape)}"
        )


def check_broadcasts_to(what: str, shape: Sequence[int], target: Sequence[int]) -> None:
    """A param or weight may broadcast *to* the input shape but never enlarge it."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{what} has shape {shape}, which does not broadcast to the input shape {target}"
        )


def resolve_params(
    loss_name: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge call-time overrides into the defaults, refusing unknown and missing params."""
    for k in overrides:
        if k not in defaults:
            valid = ", ".join(defaults) or "none"
            raise TypeError(f"loss {loss_name!r} got an unknown param {k!r}; valid params: {valid}")
    # an explicit None means "the default" (as torch's weight=None); required stays required
    values = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise TypeError(
            f"loss {loss_name!r} is missing required param(s): "
            + ", ".join(repr(m) for m in missing)
        )
    return values
