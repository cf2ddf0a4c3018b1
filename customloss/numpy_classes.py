"""Class-axis path of the NumPy backend (losses declared with ``classes=True``).

Same conventions as :mod:`customloss.torch_classes`: class axis moved to axis 1,
probability or class-index targets (gathered, never one-hot), ``ignore_index``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from customloss import _validate
from customloss.numpy_backend import (
    _array,
    _as_float,
    _compute_dtype,
    _fresh,
    _numeric,
    _sum_to,
)

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = ["evaluate", "gradient"]


def _prepare(
    loss: Loss,
    input: Any,
    target: Any,
    weight: Any,
    params: dict[str, Any],
    class_dim: int | None,
    ignore_index: int,
) -> dict[str, Any]:
    p = _as_float(input, "input")
    nd = p.ndim
    cd, sample_shape, keep = _validate.class_axis(loss.name, p.shape, class_dim)
    cdt = _compute_dtype(p)
    x = (p[None] if nd == 1 else np.moveaxis(p, cd, 1)).astype(cdt, copy=False)
    n_classes = x.shape[1]
    t = _array("target", target)
    valid = None
    if t.dtype.kind in "iu":
        _validate.check_index_target(p.shape, cd, sample_shape, t.shape)
        idx = t.astype(np.int64).reshape(keep)
        valid = idx != ignore_index
        bad = valid & ((idx < 0) | (idx >= n_classes))
        if bad.any():
            raise _validate.out_of_range_index(int(idx[bad][0]), n_classes, ignore_index)
        tgt = np.where(valid, idx, 0)
        mode = "index"
    elif t.dtype.kind in "fb":
        _validate.check_probability_target(p.shape, t.shape, sample_shape)
        _validate.check_no_ignore_index(ignore_index)
        tgt = (t[None] if nd == 1 else np.moveaxis(t, cd, 1)).astype(cdt, copy=False)
        mode = "prob"
    else:
        raise TypeError(f"target must be a numeric array, got dtype {t.dtype}")
    ps = []
    for name, value in params.items():
        v = _numeric(f"param {name!r}", value, cdt)
        v = v.reshape(
            _validate.class_param_shape(name, v.shape, name in loss.per_class, n_classes, x.ndim)
        )
        ps.append(v)
    w = None
    if weight is not None:
        w = _numeric("weight", weight, cdt)
        _validate.check_sample_weight(w.shape, sample_shape)
        w = np.broadcast_to(w, sample_shape).reshape(keep)
    # params given as the plain number 0: the kernels specialise to them, as in the Torch
    # backend (a NaN class weight then stays in its own class's samples)
    zeros = frozenset(
        n
        for n, v in params.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
    )
    return {
        "x": x,
        "target": tgt,
        "mode": mode,
        "zeros": zeros,
        "valid": valid,
        "weight": w,
        "params": ps,
        "sample_shape": sample_shape,
        "cd": cd,
        "nd": nd,
        "dtype": p.dtype,
        "cdt": cdt,
    }


def _values(loss: Loss, prep: dict[str, Any]) -> tuple[np.ndarray, Any]:
    mode = prep["mode"]
    kernel = loss._class_kernel("numpy", mode, (), True, prep["zeros"])
    outs = kernel.fn(prep["x"], prep["target"], *prep["params"])
    values = outs[0]
    valid = prep["valid"]
    if valid is not None:
        values = np.where(valid, values, 0.0)
    if prep["weight"] is not None:
        values = values * prep["weight"]
    if mode == "index":
        if loss.index_mean_weight is not None:
            den = np.where(valid, outs[1], 0.0).sum()
        else:
            den = valid.sum()
    else:
        den = values.size
    return values, den


def evaluate(
    loss: Loss,
    input: Any,
    target: Any,
    *,
    reduction: str,
    weight: Any,
    params: dict[str, Any],
    class_dim: int | None = None,
    ignore_index: int = -100,
) -> Any:
    """Evaluate a class-axis ``loss`` on arrays (see ``Loss.__call__``)."""
    prep = _prepare(loss, input, target, weight, params, class_dim, ignore_index)
    with np.errstate(all="ignore"):
        values, den = _values(loss, prep)
        if reduction == "none":
            return _fresh(values.reshape(prep["sample_shape"]), prep["dtype"])
        total = values.sum() if reduction == "sum" else values.sum() / den
        return np.asarray(total, dtype=prep["dtype"])[()]


def gradient(
    loss: Loss,
    input: Any,
    target: Any,
    *,
    wrt: str,
    reduction: str,
    weight: Any,
    params: dict[str, Any],
    class_dim: int | None = None,
    ignore_index: int = -100,
) -> np.ndarray:
    """Gradient of the reduced class-axis loss with respect to ``wrt``.

    For ``reduction="none"`` this is the gradient of the *sum* of the per-sample
    losses (a per-class derivative couples all classes of a sample).
    """
    prep = _prepare(loss, input, target, weight, params, class_dim, ignore_index)
    mode = prep["mode"]
    if wrt == loss.inputs[1] and mode == "index":
        raise ValueError("class-index targets have no gradient")
    if mode == "index" and reduction == "mean":
        _validate.check_mean_denominator(loss, [wrt])
    with np.errstate(all="ignore"):
        x, tgt, ps = prep["x"], prep["target"], prep["params"]
        _, den = _values(loss, prep)
        g = 1.0 / den if reduction == "mean" else 1.0
        scale = np.full((x.shape[0], 1, *x.shape[2:]), g, dtype=prep["cdt"])
        if prep["weight"] is not None:
            scale = scale * prep["weight"]
        valid = prep["valid"]
        if valid is not None:
            scale = scale * valid

        def masked(a: np.ndarray) -> np.ndarray:
            # ignored positions give exactly 0, also where the derivative at their
            # stand-in target class is inf/nan (0 * inf would be nan)
            return a if valid is None else np.where(valid, a, 0.0)

        kernel = loss._class_kernel("numpy", mode, (wrt,), False, prep["zeros"])
        outs = list(kernel.fn(x, tgt, *ps))
        names = [*loss.inputs, *loss.params]
        arg = (x, tgt, *ps)[names.index(wrt)]
        d = outs.pop(0)
        if wrt not in loss.per_class:
            res = np.asarray(masked(d * scale).sum())
            return res.reshape(np.shape(params[wrt])).astype(prep["dtype"])
        dense = masked(d * scale)
        gathers = mode == "index" and loss._index_gathers()
        at = masked(outs.pop(0) * scale) if gathers else None
        if wrt in loss.inputs:
            if at is not None:
                # one target class per sample: add at it, no one-hot
                at_target = np.take_along_axis(dense, tgt, axis=1) + at
                np.put_along_axis(dense, tgt, at_target, axis=1)
            out = dense[0] if prep["nd"] == 1 else np.moveaxis(dense, 1, prep["cd"])
            return out.astype(prep["dtype"])
        red = _sum_to(dense, np.shape(arg)) if np.ndim(arg) else np.asarray(dense.sum())
        if at is not None:
            extra = np.zeros(x.shape[1], dtype=dense.dtype)
            np.add.at(extra, tgt.reshape(-1), at.reshape(-1))
            red = red + (extra.reshape(np.shape(arg)) if np.ndim(arg) else extra.sum())
        return np.asarray(red).reshape(np.shape(params[wrt])).astype(prep["dtype"])
