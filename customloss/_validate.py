"""Argument checks shared by the backends; every check runs before any computation."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
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


def check_broadcasts_to(
    what: str, shape: Sequence[int], target: Sequence[int], target_name: str = "the input shape"
) -> None:
    """A param or weight may broadcast *to* the input shape but never enlarge it."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{what} has shape {shape}, which does not broadcast to {target_name} {target}"
        )


def check_param_names(
    loss_name: str,
    given: Iterable[str],
    known: Sequence[str],
    *,
    phrase: str = "got an unknown param",
    caller: str = "",
) -> None:
    """Refuse a name that is not a param (or option) of the loss: ``TypeError`` naming it,
    suggesting a close match, listing the valid ones."""
    for k in given:
        if k not in known:
            import difflib

            hint = difflib.get_close_matches(k, list(known), n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            valid = ", ".join(known) or "none"
            raise TypeError(
                f"{caller}loss {loss_name!r} {phrase} {k!r}{maybe}; valid params: {valid}"
            )


def resolve_params(
    loss_name: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge call-time overrides into the defaults, refusing unknown and missing params."""
    check_param_names(loss_name, overrides, list(defaults))
    # an explicit None means "the default" (as torch's weight=None); required stays required
    values = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise TypeError(
            f"loss {loss_name!r} is missing required param(s): "
            + ", ".join(repr(m) for m in missing)
        )
    return values


# -- the class axis (shared by the NumPy and Torch class-axis paths) -----------------
def class_axis(
    loss_name: str, shape: Sequence[int], class_dim: int | None
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Normalise ``class_dim`` for an input of ``shape``.

    Returns:
        ``(cd, sample_shape, keep_shape)``: the class dim, the input shape without it,
        and the per-sample shape once the class axis is moved to dim 1 (size 1 there).
    """
    shape = tuple(shape)
    nd = len(shape)
    if nd == 0:
        raise ValueError(f"loss {loss_name!r} needs an input with a class axis; got a 0-d input")
    cd = (0 if nd == 1 else 1) if class_dim is None else class_dim
    if isinstance(cd, bool) or not isinstance(cd, int) or not -nd <= cd < nd:
        raise ValueError(f"class_dim={class_dim!r} is out of range for an input with {nd} dims")
    cd %= nd
    if shape[cd] == 0:
        raise ValueError(
            f"loss {loss_name!r}: the input has no classes (size 0 along class_dim {cd}, "
            f"shape {shape})"
        )
    sample = shape[:cd] + shape[cd + 1 :]
    moved = (1, shape[0]) if nd == 1 else (sample[0], shape[cd], *sample[1:])
    keep = (moved[0], 1, *moved[2:])
    return cd, sample, keep


def check_index_target(
    input_shape: Sequence[int], cd: int, sample_shape: Sequence[int], target_shape: Sequence[int]
) -> None:
    """Class-index targets have the input shape without the class axis."""
    if tuple(target_shape) != tuple(sample_shape):
        raise ValueError(
            f"class-index target must have the input shape {tuple(input_shape)} without the "
            f"class axis (dim {cd}), i.e. {tuple(sample_shape)}; got {tuple(target_shape)}"
        )


def check_probability_target(
    input_shape: Sequence[int],
    target_shape: Sequence[int],
    sample_shape: Sequence[int] | None = None,
) -> None:
    """Probability targets (a floating or bool target) have the input's shape."""
    if sample_shape is not None and tuple(target_shape) == tuple(sample_shape):
        raise ValueError(
            f"target has the shape of class indices {tuple(target_shape)} (the input "
            f"shape {tuple(input_shape)} without the class axis) but a floating-point or "
            "bool dtype, which means probabilities; give class indices as integers "
            "(e.g. target.long() or target.astype(np.int64))"
        )
    if tuple(target_shape) != tuple(input_shape):
        raise ValueError(
            f"input and target must have the same shape (probability targets) or the "
            f"target the input shape without the class axis (class indices); got input "
            f"shape {tuple(input_shape)} and target shape {tuple(target_shape)}"
        )


def check_no_ignore_index(ignore_index: int) -> None:
    """Probability targets have no ignored positions: an ``ignore_index`` other than the
    default -100 would be silently unused (``F.cross_entropy`` refuses it too)."""
    if ignore_index != -100:
        raise ValueError(
            f"ignore_index={ignore_index} applies to class-index (integer) targets; "
            "a floating-point (probability) target has no ignored positions: mask "
            "them with weight= instead"
        )


def out_of_range_index(bad_value: int, n_classes: int, ignore_index: int) -> ValueError:
    """The error for a class index outside ``[0, C)``."""
    return ValueError(
        f"target contains class index {bad_value} outside [0, {n_classes}) "
        f"(ignore_index={ignore_index})"
    )


def class_param_shape(
    name: str, shape: Sequence[int], per_class: bool, n_classes: int, ndim: int
) -> tuple[int, ...]:
    """The shape a param of a class-axis loss takes inside the kernels."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    if per_class:
        if numel != 1 and shape != (n_classes,):
            raise ValueError(
                f"param {name!r} is per-class: give a scalar or a vector of length "
                f"C={n_classes}; got shape {shape}"
            )
        return () if numel == 1 else (1, n_classes, *([1] * (ndim - 2)))
    if numel != 1:
        raise ValueError(
            f"param {name!r} is a scalar param of a class-axis loss; got shape {shape}"
        )
    return ()


# -- value domains ------------------------------------------------------------------------
# Inputs' domains are checked on request (``loss(..., validate=True)``: a pass over the
# data); params' domains whenever a value is given as a number, a list or a NumPy array
# (a few values, no device synchronisation), and for tensors with ``validate=True``.
DOMAINS = {
    "probability": "in [0, 1]",
    "binary": "in {0, 1}",
    "sign": "in {-1, +1}",
    "nonnegative": ">= 0",
    "positive": "> 0",
}
#: the named domains that are intervals, as (low, high, low closed, high closed)
_NAMED_INTERVALS = {
    "probability": (0.0, 1.0, True, True),
    # (+inf included: ">= 0" holds for it, and torch accepts e.g. huber's delta = inf)
    "nonnegative": (0.0, float("inf"), True, True),
    "positive": (0.0, float("inf"), False, True),
}
#: interval strings parsed so far (a dict lookup that torch.compile can trace)
_PARSED: dict[str, tuple[float, float, bool, bool]] = {}
_INTERVAL_RE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*$")


def domain_interval(domain: str) -> tuple[float, float, bool, bool] | None:
    """``(low, high, low_closed, high_closed)`` of an interval domain, ``None`` for a set.

    A domain is one of :data:`DOMAINS` or an interval written ``"[0, 1)"``,
    ``"(0, inf)"``, ``"[-1, 1]"`` (``inf``/``-inf`` for an unbounded side).

    Raises:
        ValueError: ``domain`` is neither, naming it and the valid forms.
    """
    if domain in _NAMED_INTERVALS:
        return _NAMED_INTERVALS[domain]
    if domain in DOMAINS:
        return None
    if domain in _PARSED:
        return _PARSED[domain]
    m = _INTERVAL_RE.match(domain) if isinstance(domain, str) else None
    if m:
        try:
            lo, hi = float(m[2]), float(m[3])
        except ValueError:
            m = None
        else:
            if not (lo != lo or hi != hi or lo > hi):
                _PARSED[domain] = lo, hi, m[1] == "[", m[4] == "]"
                return _PARSED[domain]
    raise ValueError(
        f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}, or an interval "
        "such as '[0, 1)' or '(0, inf)'"
    )


def describe_domain(domain: str) -> str:
    """``"in [0, 1]"``, ``"> 0"``, ``"in [0, 1)"``: the words of an error message."""
    return DOMAINS.get(domain) or f"in {domain.strip()}"


def check_domain(what: str, values: Any, domain: str, *, indices: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` if ``values`` leave ``domain``.

    Works for numbers (``Fraction``/``Decimal`` too), NumPy arrays, array-likes and
    torch tensors (any floating dtype; a meta tensor has no values to check).
    ``indices``: ``values`` is a class-axis loss's target, where an integer array
    holds class indices, not probabilities (checked elsewhere).
    """
    import numpy as np

    interval = domain_interval(domain)
    if hasattr(values, "detach"):
        t = values.detach()
        if t.device.type == "meta":
            return
        if t.is_floating_point() and t.element_size() < 4:  # (NumPy has no bfloat16)
            t = t.float()
        values = t.cpu().numpy()
    v = np.asarray(values)
    if indices and v.dtype.kind in "iu":
        return  # class indices
    if v.dtype.kind == "O":  # Fraction, Decimal, ...
        with contextlib.suppress(TypeError, ValueError):  # (then refused just below)
            v = v.astype(np.float64)
    if v.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be real numbers; got an array of dtype {v.dtype}")
    with np.errstate(invalid="ignore"):
        if interval is not None:
            lo, hi, lo_closed, hi_closed = interval
            above = v >= lo if lo_closed else v > lo
            below = v <= hi if hi_closed else v < hi
            bad = ~(above & below)
        elif domain == "binary":
            bad = ~((v == 0) | (v == 1))
        else:  # sign
            bad = ~((v == -1) | (v == 1))
    bad &= ~np.isnan(v)  # NaN propagates; it is not a domain error
    if bad.any():
        first = v[bad].reshape(-1)[0]
        count = f" ({int(bad.sum())} of {v.size} values outside)" if v.size > 1 else ""
        raise ValueError(f"{what} must be {describe_domain(domain)}; found {float(first)!r}{count}")


def in_domain(value: float, domain: str) -> bool:
    """Whether the number ``value`` lies in ``domain`` (NaN counts as inside)."""
    try:
        check_domain("", value, domain)
    except ValueError:
        return False
    return True


def check_param_domains(
    loss_name: str, domains: Mapping[str, str], values: Mapping[str, Any], *, tensors: bool
) -> None:
    """Check the params in ``values`` that have a declared domain.

    Numbers, sequences and NumPy arrays are always checked; torch tensors only when
    ``tensors`` (``validate=True``: reading a GPU tensor synchronises the device).
    """
    for name, value in values.items():
        domain = domains.get(name)
        if domain is None or value is None or (hasattr(value, "detach") and not tensors):
            continue
        what = f"loss {loss_name!r}: param {name!r}"
        if type(value) in (int, float):
            # in pure Python, which torch.compile(fullgraph=True) traces (NumPy's dtype
            # checks in check_domain it cannot)
            if not _number_inside(value, domain):
                try:
                    found = repr(float(value))
                except OverflowError:  # an int beyond float range
                    found = repr(value)
                raise ValueError(f"{what} must be {describe_domain(domain)}; found {found}")
            continue
        check_domain(what, value, domain)


def _number_inside(v: float, domain: str) -> bool:
    """Whether the Python number ``v`` lies in ``domain`` (NaN counts as inside)."""
    if domain == "binary":
        return v in (0, 1) or v != v
    if domain == "sign":
        return v in (-1, 1) or v != v
    interval = _NAMED_INTERVALS.get(domain) or _PARSED.get(domain) or domain_interval(domain)
    if interval is None:
        return False
    lo, hi, lo_closed, hi_closed = interval
    if isinstance(v, int) and not -(2**1023) < v < 2**1023:  # (beyond float range)
        return (v > 0 and hi == float("inf")) or (v < 0 and lo == -float("inf"))
    above = v >= lo if lo_closed else v > lo
    below = v <= hi if hi_closed else v < hi
    return (above and below) or v != v


def check_sample_weight(shape: Sequence[int], sample_shape: Sequence[int]) -> None:
    """A class-axis loss's sample ``weight`` broadcasts to the per-sample shape."""
    check_broadcasts_to(
        "weight", shape, sample_shape, "the per-sample shape (the input without its class axis)"
    )


def check_mean_denominator(loss: Any, learned: Sequence[str]) -> None:
    """Refuse gradients of params in the weighted mean's denominator (index targets).

    With class-index targets, ``reduction="mean"`` divides by ``index_mean_weight``
    summed over the samples (``sum_n w[y_n]`` for class weights, as
    ``F.cross_entropy``); the kernels treat that denominator as a constant, which is
    exact for every param it does not contain.
    """
    if loss.index_mean_weight is None:
        return
    inside = {s.name for s in loss.index_mean_weight.free_symbols}
    for name in learned:
        if name in inside:
            raise NotImplementedError(
                f"loss {loss.name!r}: the gradient of {name!r} through the weighted mean "
                "with class-index targets is not supported (it is in the mean's "
                "denominator); use reduction='sum' and divide by the weight total, or "
                "probability targets"
            )
