"""Multitask composition: several task losses combined into one objective.

``multitask({"depth": huber, "seg": cross_entropy}, weights={...})`` combines the
tasks' *reduced* losses ``L_i`` with a weighting scheme:

* ``"fixed"`` (default): ``L = sum_i w_i L_i`` with the given non-negative weights
  (missing tasks weigh 1).
* ``"uncertainty"``: Kendall, Gal & Cipolla 2018, in the common log-variance form
  ``L = sum_i exp(-s_i) L_i + s_i`` with learnable ``s_i = log sigma_i^2``. The paper's
  regression form has ``1/2`` factors (``1/(2 sigma^2) L + log sigma``); we drop them,
  which only rescales the objective by 2 for regression tasks and treats classification
  and regression tasks alike. At the optimum ``s_i = log L_i``: for an MSE task, the
  log of its noise variance.
* ``"dwa"``: dynamic weight average (Liu, Johns & Davison 2019, eq. 1) with temperature
  ``T`` (default 2): ``w_i = K exp(r_i / T) / sum_j exp(r_j / T)`` with
  ``r_i = L_i(t-1) / L_i(t-2)`` from the epoch-mean losses of the last two epochs
  (``end_epoch()`` closes an epoch); ``w_i = 1`` for the first two epochs.

``mt.expr`` is the objective as SymPy in symbols ``L_<task>`` (and ``s_<task>`` or
``w_<task>``); ``mt.grad("s_a")`` differentiates it.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

from customloss._lazy import sympy
from customloss.dsl import symbol
from customloss.loss import Loss

__all__ = ["MultiTask", "multitask"]

WEIGHTINGS = ("fixed", "uncertainty", "dwa")
_TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MultiTask:
    """Several task losses combined into one objective (see the module docstring).

    Call it like a loss with dicts keyed by task::

        value = mt(preds, targets, seg={"ignore_index": 255})
    """

    def __init__(
        self,
        tasks: Mapping[str, Loss],
        *,
        weights: Mapping[str, float] | None = None,
        weighting: str = "fixed",
        temperature: float = 2.0,
    ) -> None:
        if not tasks:
            raise ValueError("multitask needs at least one task")
        for name, loss in tasks.items():
            if not isinstance(name, str) or not _TASK_RE.match(name):
                raise ValueError(f"task name {name!r} must be an identifier")
            if not isinstance(loss, Loss):
                raise TypeError(
                    f"task {name!r}: expected a customloss Loss, got {type(loss).__name__}"
                )
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown weighting {weighting!r}; valid: {', '.join(map(repr, WEIGHTINGS))}"
            )
        weights = dict(weights or {})
        for name, w in weights.items():
            if name not in tasks:
                raise ValueError(
                    f"weights name the unknown task {name!r}; tasks: {', '.join(tasks)}"
                )
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
                raise ValueError(f"weight of task {name!r} must be a finite number, got {w!r}")
            if w < 0:
                raise ValueError(f"weight of task {name!r} is negative ({w})")
        if weighting != "fixed" and weights:
            raise ValueError(f"weights only apply to weighting='fixed', not {weighting!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks: dict[str, Loss] = dict(tasks)
        self.weighting = weighting
        self.weights = {t: float(weights.get(t, 1.0)) for t in tasks}
        self.temperature = float(temperature)
        #: log-variances s_i of the uncertainty weighting (the module learns its own)
        self.log_vars: dict[str, float] = {t: 0.0 for t in tasks}
        self._history: list[dict[str, float]] = []
        # running sums of this epoch's task losses (tensors stay on their device: no
        # synchronisation per step; end_epoch reads them)
        self._epoch_sum: dict[str, Any] = {t: 0.0 for t in tasks}
        self._epoch_count = 0

    # -- symbolic ------------------------------------------------------------
    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        """``L_<task>``, and ``s_<task>`` or ``w_<task>``, by name."""
        out = {f"L_{t}": symbol(f"L_{t}") for t in self.tasks}
        prefix = "s" if self.weighting == "uncertainty" else "w"
        out.update({f"{prefix}_{t}": symbol(f"{prefix}_{t}") for t in self.tasks})
        return out

    @property
    def expr(self) -> sympy.Expr:
        """The objective in the task losses ``L_<task>`` (SymPy)."""
        S = self.symbols
        if self.weighting == "uncertainty":
            return sympy.Add(
                *(sympy.exp(-S[f"s_{t}"]) * S[f"L_{t}"] + S[f"s_{t}"] for t in self.tasks)
            )
        return sympy.Add(*(S[f"w_{t}"] * S[f"L_{t}"] for t in self.tasks))

    def grad(self, wrt: str) -> sympy.Expr:
        """Derivative of :attr:`expr` with respect to ``L_<task>``, ``s_<task>``, ..."""
        S = self.symbols
        if wrt not in S:
            raise ValueError(f"multitask has no symbol {wrt!r}; choose one of {', '.join(S)}")
        from customloss.differentiate import diff

        return diff(self.expr, S[wrt])

    # -- weights -------------------------------------------------------------
    def current_weights(self) -> dict[str, float]:
        """The task weights the next call uses (fixed or DWA; 1 for uncertainty)."""
        if self.weighting == "fixed":
            return dict(self.weights)
        if self.weighting == "dwa" and len(self._history) >= 2:
            prev, prev2 = self._history[-1], self._history[-2]
            r = {t: prev[t] / prev2[t] if prev2[t] != 0 else 1.0 for t in self.tasks}
            m = max(v / self.temperature for v in r.values())
            e = {t: math.exp(r[t] / self.temperature - m) for t in self.tasks}
            total = sum(e.values())
            return {t: len(self.tasks) * e[t] / total for t in self.tasks}
        return {t: 1.0 for t in self.tasks}

    def end_epoch(self) -> None:
        """Close an epoch: its mean training task losses feed the DWA weights."""
        if self._epoch_count:
            self._history.append(
                {t: float(v) / self._epoch_count for t, v in self._epoch_sum.items()}
            )
        self._epoch_sum = {t: 0.0 for t in self.tasks}
        self._epoch_count = 0

    def dwa_state(self) -> dict[str, Any]:
        """The DWA history and the open epoch's sums, as plain numbers (for checkpoints;
        ``MultiTaskModule`` puts it in its ``state_dict``)."""
        return {
            "history": [dict(h) for h in self._history],
            "epoch_sum": {t: float(v) for t, v in self._epoch_sum.items()},
            "epoch_count": self._epoch_count,
        }

    def load_dwa_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`dwa_state` returned."""
        history = [{t: float(h[t]) for t in self.tasks} for h in state["history"]]
        epoch_sum = {t: float(state["epoch_sum"][t]) for t in self.tasks}
        self._history, self._epoch_sum = history, epoch_sum
        self._epoch_count = int(state["epoch_count"])

    # -- calling ---------------------------------------------------------------
    def _check(
        self, preds: Mapping[str, Any], targets: Mapping[str, Any], task_kwargs: Mapping[str, Any]
    ) -> None:
        for what, d in (("preds", preds), ("targets", targets)):
            if not isinstance(d, Mapping):
                raise TypeError(f"{what} must be a dict keyed by task, got {type(d).__name__}")
            extra = [t for t in d if t not in self.tasks]
            if extra:
                raise ValueError(
                    f"{what} name the unknown task {extra[0]!r}; tasks: {', '.join(self.tasks)}"
                )
        for t in self.tasks:
            if (t in preds) != (t in targets):
                missing = "targets" if t in preds else "preds"
                raise ValueError(
                    f"task {t!r} is in {'preds' if t in preds else 'targets'} but not in {missing}"
                )
            if t not in preds:
                raise ValueError(f"task {t!r} has no prediction and target")
        for t, kw in task_kwargs.items():
            if t not in self.tasks:
                raise ValueError(f"keyword arguments for the unknown task {t!r}")
            if not isinstance(kw, Mapping):
                raise TypeError(f"keyword arguments for task {t!r} must be a dict")

    def task_losses(
        self, preds: Mapping[str, Any], targets: Mapping[str, Any], **task_kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Each task's reduced loss (its own reduction and kwargs)."""
        self._check(preds, targets, task_kwargs)
        return {
            t: loss(preds[t], targets[t], **dict(task_kwargs.get(t, {})))
            for t, loss in self.tasks.items()
        }

    def combine(
        self,
        losses: Mapping[str, Any],
        log_vars: Mapping[str, Any] | None = None,
        *,
        record: bool | None = None,
    ) -> Any:
        """Combine task losses with the weighting (``log_vars`` for "uncertainty").

        Args:
            losses: task name -> reduced loss.
            log_vars: the ``s_i`` of "uncertainty" (default :attr:`log_vars`).
            record: whether these losses count towards the epoch means of "dwa".
                Default: torch losses count when they carry a gradient (not under
                ``no_grad``/``inference_mode``, so validation calls do not), other
                values always.

        Raises:
            ValueError: a task loss is not a scalar (e.g. ``reduction="none"``): the
                tasks' per-sample shapes need not agree, so nothing is broadcast.
        """
        for t in self.tasks:
            shape = getattr(losses[t], "shape", ())
            if len(shape) != 0:
                raise ValueError(
                    f"task {t!r}: its loss has shape {tuple(shape)}, but the objective "
                    "combines scalars; give that task reduction='mean' or 'sum'"
                )
        if self.weighting == "uncertainty":
            s = log_vars if log_vars is not None else self.log_vars
            total = 0.0
            for t in self.tasks:
                exp_neg = _exp(-s[t])
                total = total + exp_neg * losses[t] + s[t]
            return total
        w = self.current_weights()
        if self.weighting == "dwa":
            if record is None:
                record = _training_values(losses.values())
            if record:
                for t in self.tasks:
                    self._epoch_sum[t] = self._epoch_sum[t] + _accumulable(losses[t])
                self._epoch_count += 1
        total = 0.0
        for t in self.tasks:
            total = total + w[t] * losses[t]
        return total

    def __call__(
        self, preds: Mapping[str, Any], targets: Mapping[str, Any], **task_kwargs: Mapping[str, Any]
    ) -> Any:
        """The combined objective for ``preds``/``targets`` dicts keyed by task."""
        return self.combine(self.task_losses(preds, targets, **task_kwargs))

    def torch(self) -> Any:
        """An ``nn.Module``; for "uncertainty" its parameters are the ``s_i`` (init 0),
        for "dwa" its ``state_dict`` holds the loss history, and only calls in training
        mode with grad enabled count towards the epoch means."""
        from customloss.torch_backend import DWAModule, MultiTaskModule

        return DWAModule(self) if self.weighting == "dwa" else MultiTaskModule(self)

    def __repr__(self) -> str:
        tasks = ", ".join(f"{t}={loss.name}" for t, loss in self.tasks.items())
        return f"MultiTask({tasks}, weighting={self.weighting!r})"


def _exp(x: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.exp(x)
    return math.exp(x)


def _training_values(values: Any) -> bool:
    """False for torch tensors computed without a graph (evaluation), else True."""
    torch = sys.modules.get("torch")
    tensors = [v for v in values if torch is not None and isinstance(v, torch.Tensor)]
    return not tensors or any(v.requires_grad for v in tensors)


def _detach(x: Any) -> Any:
    return x.detach() if hasattr(x, "detach") else x


def _accumulable(x: Any) -> Any:
    """``x`` detached, in float64 (float32 on MPS, which has no float64) for an epoch
    sum kept on the device: a float16 sum stops growing at 2048, a bfloat16 one at 256."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return float(x)  # NumPy / Python: a double on the host
    x = x.detach()
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def multitask(
    tasks: Mapping[str, Loss],
    *,
    weights: Mapping[str, float] | None = None,
    weighting: str = "fixed",
    temperature: float = 2.0,
) -> MultiTask:
    """Combine task losses into one objective.

    Args:
        tasks: task name -> ``Loss`` (in order).
        weights: fixed non-negative weights per task (``weighting="fixed"``).
        weighting: ``"fixed"``, ``"uncertainty"`` (Kendall et al. 2018) or ``"dwa"``
            (Liu et al. 2019).
        temperature: the DWA temperature ``T``.

    Returns:
        A :class:`MultiTask`.

    References:
        Kendall, Gal, Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh
        Losses", eq. 7; Liu, Johns, Davison 2019, "End-to-End Multi-Task Learning with
        Attention", eq. 1.
    """
    return MultiTask(tasks, weights=weights, weighting=weighting, temperature=temperature)
