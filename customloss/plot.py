r"""Loss and gradient curves with matplotlib.

:func:`plot_loss` draws a loss (left) and its derivative with respect to the prediction
(right) along one axis, optionally for several values of one param::

    from customloss.plot import plot_loss

    fig = plot_loss("focal", param="gamma", values=(0, 0.5, 1, 2, 5), x="p_t")
    fig.savefig("focal.png")        # Lin et al. (2017), fig. 1

The curves come from the compiled NumPy kernels (``loss(..., reduction="none")`` and
:meth:`Loss.gradient <customloss.loss.Loss.gradient>`), so they show what training
computes.  matplotlib is imported only when a figure is drawn (``pip install
customloss[plot]``), and no pyplot state is touched: the figure is a plain
``matplotlib.figure.Figure``.

The x axis (``x=``):

* ``"logit"``: the raw prediction over ``[-6, 6]`` (for a loss on probabilities, the
  probability is ``sigmoid`` of it); target 1 by default.
* ``"p_t"``: the probability of the ground-truth class over ``(0, 1)``, as in Lin et al.
  (2017), fig. 1; a loss on logits gets ``logit(p_t)``; target 1 (or 0) only.
* ``"residual"``: ``prediction - target`` over ``[-3, 3]``, target 0 by default.

What the prediction means is read from the loss (:func:`input_kind`): its name (``x``,
``z``, ``logit``, ``score``: a logit), or a ``log`` of it (a probability); otherwise a
value (regression).  The default axis follows from it: ``"logit"``, ``"p_t"`` or
``"residual"``.

Class-axis losses (``classes=True``) are drawn with ``classes`` classes (default 2) and
the ground truth in class 0: the logits are ``(t, 0, ..., 0)`` (or probabilities that put
``p_t`` on class 0 and share the rest), the target is one-hot, and the gradient shown is
the one of the ground-truth class's entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from customloss.loss import Loss

__all__ = [
    "AXES",
    "INPUT_KINDS",
    "PRESETS",
    "Curve",
    "curves",
    "input_kind",
    "plot_loss",
]

#: The x axes :func:`plot_loss` can draw.
AXES: tuple[str, ...] = ("logit", "p_t", "residual")
#: What a loss's prediction can be (see :func:`input_kind`).
INPUT_KINDS: tuple[str, ...] = ("logit", "probability", "value")

_LOGIT_NAMES = frozenset({"x", "z", "logit", "logits", "score", "scores", "s"})
_DEFAULT_AXIS = {"logit": "logit", "probability": "p_t", "value": "residual"}
_DEFAULT_RANGE = {"logit": (-6.0, 6.0), "p_t": (0.005, 0.999), "residual": (-3.0, 3.0)}
_AXIS_LABEL = {
    "logit": "logit",
    "p_t": r"probability of the ground-truth class $p_t$",
    "residual": "residual (prediction - target)",
}


@dataclass(frozen=True)
class Preset:
    """Param values a registered loss is drawn with unless the caller sets them.

    Attributes:
        params: param name -> value.
        note: why, shown under the figure's title.
    """

    params: Mapping[str, float]
    note: str


#: Drawing presets by loss name: the built-in focal loss is drawn without its alpha
#: balancing (``alpha < 0``), like the curves of Lin et al. (2017), fig. 1.
PRESETS: dict[str, Preset] = {
    "focal": Preset(
        {"alpha": -1.0}, "alpha = -1: no alpha-balancing, as in Lin et al. (2017), fig. 1"
    ),
}


@dataclass(frozen=True)
class Curve:
    """One curve of :func:`curves`: the loss and its gradient along the x axis.

    Attributes:
        label: legend text (``"gamma = 2"``), empty for a single curve.
        params: the param values the curve was computed with (overrides only).
        x: the x-axis values.
        value: the elementwise loss at each x.
        gradient: the derivative of the elementwise loss with respect to the prediction
            (for class-axis losses: its ground-truth class entry).
    """

    label: str
    params: dict[str, Any]
    x: np.ndarray
    value: np.ndarray
    gradient: np.ndarray


def input_kind(loss: Loss) -> str:
    """What the loss's prediction is: ``"logit"``, ``"probability"`` or ``"value"``.

    A prediction named ``x``, ``z``, ``logit(s)``, ``score(s)`` or ``s`` is a logit; one
    whose ``log`` (or ``log(1 - p)``) appears in the expression is a probability; any
    other prediction is a value (regression).

    Args:
        loss: the loss.

    Returns:
        One of :data:`INPUT_KINDS`.
    """
    name = loss.inputs[0]
    if name in _LOGIT_NAMES:
        return "logit"
    p = loss.symbols[name]
    for log in loss.expr.atoms(sympy.log):
        if log.args[0] in (p, 1 - p):
            return "probability"
    return "value"


def _resolve(loss: Loss | str) -> Loss:
    from customloss.loss import Loss

    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        from customloss import registry

        return registry.get(loss)
    raise TypeError(f"plot_loss() needs a Loss or a registered name, got {type(loss).__name__}")


def _label_value(v: Any) -> str:
    if isinstance(v, (tuple, list, np.ndarray)):
        return "(" + ", ".join(_label_value(x) for x in np.asarray(v).ravel()) + ")"
    return f"{float(v):g}"


def _points(
    loss: Loss, axis: str, t: np.ndarray, target: float | None, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and target arrays for the x-axis values ``t``."""
    kind = input_kind(loss)
    if loss.classes:
        if target is not None:
            raise ValueError(
                f"loss {loss.name!r} has a class axis: the target is class 0 (one-hot); "
                "do not pass target="
            )
        if axis == "residual":
            raise ValueError(
                f"x='residual' is not defined for the class-axis loss {loss.name!r}; "
                "use x='logit' or x='p_t'"
            )
        y = np.zeros((t.size, classes))
        y[:, 0] = 1.0
        z = np.zeros((t.size, classes))
        if axis == "logit":
            z[:, 0] = t
            if kind == "probability":
                z = np.exp(z - z.max(axis=1, keepdims=True))
                z /= z.sum(axis=1, keepdims=True)
        elif kind == "probability":
            z[:, 0] = t
            z[:, 1:] = ((1 - t) / (classes - 1))[:, None]
        else:  # softmax(z)[0] == p_t
            z[:, 0] = np.log(t * (classes - 1)) - np.log1p(-t)
        return z, y
    if axis == "residual":
        y0 = 0.0 if target is None else float(target)
        return y0 + t, np.full_like(t, y0)
    y0 = 1.0 if target is None else float(target)
    if axis == "p_t":
        if y0 not in (0.0, 1.0):
            raise ValueError(f"x='p_t' needs the target 0 or 1, got {y0:g}")
        p = t if y0 == 1.0 else 1.0 - t
        pred = np.log(p) - np.log1p(-p) if kind == "logit" else p
        return pred, np.full_like(t, y0)
    pred = 1.0 / (1.0 + np.exp(-t)) if kind == "probability" else t
    return pred, np.full_like(t, y0)


def curves(
    loss: Loss | str,
    *,
    param: str | None = None,
    values: Sequence[Any] = (),
    x: str | None = None,
    target: float | None = None,
    x_range: tuple[float, float] | None = None,
    points: int = 400,
    params: Mapping[str, Any] | None = None,
    classes: int = 2,
) -> list[Curve]:
    """The data :func:`plot_loss` draws: one :class:`Curve` per value of ``param``.

    Arguments as for :func:`plot_loss`.

    Returns:
        The curves, in the order of ``values`` (one curve when ``param`` is None).

    Raises:
        ValueError: an unknown axis or param, a missing required param, a target that
            the axis cannot use.
    """
    loss = _resolve(loss)
    axis = x or _DEFAULT_AXIS[input_kind(loss)]
    if axis not in AXES:
        raise ValueError(f"unknown x axis {axis!r}; valid axes: {', '.join(AXES)}")
    if not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if loss.classes and (not isinstance(classes, int) or classes < 2):
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    fixed = dict(params or {})
    for name in [*fixed, *([param] if param is not None else [])]:
        if name not in loss.params:
            valid = ", ".join(loss.params) or "none"
            raise ValueError(f"loss {loss.name!r} has no param {name!r}; valid params: {valid}")
    if param is not None and not len(values):
        raise ValueError(f"param={param!r} needs at least one value in values=")
    if param is None and len(values):
        raise ValueError("values= needs param= (the param the values are for)")
    preset = PRESETS.get(loss.name)
    if preset is not None:
        for k, v in preset.params.items():
            if k in loss.params and k not in fixed and k != param:
                fixed[k] = v
    missing = [k for k, v in loss.params.items() if v is None and k not in fixed and k != param]
    if missing:
        raise ValueError(
            f"loss {loss.name!r} needs a value for param {missing[0]!r} (it has no default)"
        )
    lo, hi = x_range if x_range is not None else _DEFAULT_RANGE[axis]
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"x_range must be two finite numbers, low < high; got ({lo}, {hi})")
    if axis == "p_t" and not (lo > 0.0 and hi < 1.0):
        raise ValueError(f"x='p_t' needs a range inside (0, 1), got ({lo:g}, {hi:g})")
    t = np.linspace(lo, hi, points)
    pred, y = _points(loss, axis, t, target, classes)
    sweep: list[tuple[str, dict[str, Any]]] = (
        [(f"{param} = {_label_value(v)}", {**fixed, param: v}) for v in values]
        if param is not None
        else [("", fixed)]
    )
    out = []
    for label, overrides in sweep:
        call = {k: np.asarray(v, dtype=np.float64) for k, v in overrides.items()}
        value = np.asarray(loss(pred, y, reduction="none", **call), dtype=np.float64)
        grad = np.asarray(loss.gradient(pred, y, reduction="none", **call), dtype=np.float64)
        if loss.classes:
            grad = grad[:, 0]
        out.append(Curve(label, dict(overrides), t, value, grad))
    return out


def plot_loss(
    loss: Loss | str,
    *,
    param: str | None = None,
    values: Sequence[Any] = (),
    x: str | None = None,
    target: float | None = None,
    x_range: tuple[float, float] | None = None,
    points: int = 400,
    params: Mapping[str, Any] | None = None,
    classes: int = 2,
    gradient: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Draw the loss and its gradient along one axis, for several values of a param.

    Args:
        loss: a :class:`~customloss.loss.Loss` or a registered name.
        param: the param to vary (one curve per value); None for one curve.
        values: the values of ``param`` (scalars, or sequences for per-class params).
        x: ``"logit"``, ``"p_t"`` or ``"residual"``; default from :func:`input_kind`.
        target: the target (default 1 for ``logit``/``p_t``, 0 for ``residual``;
            class-axis losses always use class 0).
        x_range: ``(low, high)`` of the x axis; default ``[-6, 6]`` for logits,
            ``[0.005, 0.999]`` for ``p_t``, ``[-3, 3]`` for residuals.
        points: number of points per curve.
        params: values for other params (required ones included); a loss listed in
            :data:`PRESETS` gets its preset values for the params not given here.
        classes: number of classes for a class-axis loss.
        gradient: also draw the gradient (right panel).
        title: figure title; default the loss name and the fixed params.
        figsize: matplotlib figure size in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (save it with ``fig.savefig(path)``).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: see :func:`curves`.

    References:
        Lin, T.-Y. et al. (2017). Focal Loss for Dense Object Detection, fig. 1:
        ``plot_loss("focal", param="gamma", values=(0, 0.5, 1, 2, 5), x="p_t")``.
    """
    loss = _resolve(loss)
    data = curves(
        loss,
        param=param,
        values=values,
        x=x,
        target=target,
        x_range=x_range,
        points=points,
        params=params,
        classes=classes,
    )
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("plot_loss() needs matplotlib: pip install 'customloss[plot]'") from exc
    axis = x or _DEFAULT_AXIS[input_kind(loss)]
    ncols = 2 if gradient else 1
    fig = Figure(figsize=figsize or (5.2 * ncols, 4.0), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    pred_name = loss.inputs[0]
    for c in data:
        axes[0].plot(c.x, c.value, label=c.label or None)
        if gradient:
            axes[1].plot(c.x, c.gradient, label=c.label or None)
    axes[0].set_ylabel("loss")
    if gradient:
        entry = f"{pred_name}_0" if loss.classes else pred_name
        axes[1].set_ylabel(rf"gradient $\partial\ell/\partial {entry}$")
        axes[1].axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    for ax in axes:
        ax.set_xlabel(_AXIS_LABEL[axis])
        ax.grid(True, alpha=0.3)
        if param is not None:
            ax.legend(fontsize="small")
    if axis == "p_t":
        for ax in axes:
            ax.set_xlim(0.0, 1.0)
    finite = np.concatenate([c.value[np.isfinite(c.value)] for c in data] or [np.zeros(1)])
    if finite.size and finite.min() >= 0:
        axes[0].set_ylim(bottom=0.0)
    fixed = {k: v for k, v in data[0].params.items() if k != param}
    if title is None:
        shown = ", ".join(f"{k} = {_label_value(v)}" for k, v in fixed.items())
        title = loss.name + (f" ({shown})" if shown else "")
        preset = PRESETS.get(loss.name)
        if preset is not None and all(
            k == param or (k in fixed and fixed[k] == v) for k, v in preset.params.items()
        ):
            title += "\n" + preset.note
    fig.suptitle(title)
    return fig
