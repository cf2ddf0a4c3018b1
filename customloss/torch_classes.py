"""Class-axis path of the Torch backend (losses declared with ``classes=True``).

Shapes follow ``torch.nn.functional.cross_entropy``: input ``(C)``, ``(N, C)`` or
``(N, C, d1, ..., dk)`` with the class axis at ``class_dim`` (default 1; 0 for 1-D
input).  The class axis is moved to dim 1 (a view) and the generated kernels reduce it
with ``keepdim`` so per-sample quantities broadcast against per-class ones.

Targets are either probabilities (the input's shape) or class indices (the input's
shape without the class axis, an integer dtype).  With class indices the kernels
*gather* the prediction at the target class instead of materialising a one-hot, and
the backward adds the at-target part of the gradient with ``scatter_add``; positions
equal to ``ignore_index`` contribute nothing and are left out of the mean, as in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from customloss import _validate, fast
from customloss.torch_backend import (
    _apply,
    _as_tensor,
    _autocast_float32,
    _compute_dtype,
    _differentiable,
    _float_input,
    _functorch_wrapped,
    _Fused,
    _fused_request,
    _nested_forward_ad,
    _no_forward_ad,
    _owned,
    _scalable_in_place,
    _sum_to,
    _target_tensor,
    _tracing,
)

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = ["ClassLossFunction", "evaluate"]


def _prepare(
    loss: Loss,
    input: Any,
    target: Any,
    weight: Any,
    params: dict[str, Any],
    class_dim: int | None,
    ignore_index: int,
) -> dict[str, Any]:
    input = _float_input(input)
    nd = input.dim()
    cd, sample_shape, keep_shape = _validate.class_axis(loss.name, input.shape, class_dim)
    x = input.unsqueeze(0) if nd == 1 else (input.movedim(cd, 1) if cd != 1 else input)
    n_classes = x.shape[1]
    target = _target_tensor(target, input)
    valid = None
    if not target.is_floating_point() and target.dtype != torch.bool:
        _validate.check_index_target(input.shape, cd, sample_shape, target.shape)
        idx = target.long().reshape(keep_shape)
        valid = idx != ignore_index
        bad = valid & ((idx < 0) | (idx >= n_classes))
        # one read-back for both questions (a GPU synchronises once); meta tensors
        # have no values to check (nor to be wrong), and take the masked path
        if idx.device.type == "meta":
            any_bad, any_ignored = False, True
        elif _tracing():
            # traced by the user's torch.compile: no read-back (a graph break); an
            # asynchronous assert, as torch's own cross_entropy on a GPU, and the
            # masked path, which is right whether or not anything is ignored
            torch._assert_async(~bad.any(), "class-index target out of range")
            any_bad, any_ignored = False, True
        elif _functorch_wrapped(idx):
            # under torch.func.vmap: read the whole batch's targets underneath
            base = idx
            while _functorch_wrapped(base):
                base = torch._C._functorch.get_unwrapped(base)
            base_valid = base != ignore_index
            base_bad = base_valid & ((base < 0) | (base >= n_classes))
            if bool(base_bad.any()):
                raise _validate.out_of_range_index(int(base[base_bad][0]), n_classes, ignore_index)
            any_bad, any_ignored = False, True  # (the masked path is right either way)
        else:
            any_bad, any_ignored = torch.stack([bad.any(), ~valid.all()]).tolist()
        if any_bad:
            raise _validate.out_of_range_index(int(idx[bad][0]), n_classes, ignore_index)
        if any_ignored:
            tgt = torch.where(valid, idx, torch.zeros_like(idx))
        else:  # nothing ignored: no masking passes in forward or backward
            tgt, valid = idx, None
        mode = "index"
    else:
        _validate.check_probability_target(input.shape, target.shape, sample_shape)
        _validate.check_no_ignore_index(ignore_index)
        t = target if target.is_floating_point() else target.to(_compute_dtype(input.dtype))
        tgt = t.unsqueeze(0) if nd == 1 else (t.movedim(cd, 1) if cd != 1 else t)
        mode = "prob"
    # params given as the plain number 0 carry no gradient: the kernels specialise to them
    zeros = frozenset(
        n
        for n, v in params.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
    )
    ps = []
    for name, value in params.items():
        t = _as_tensor(f"param {name!r}", value, input)
        shape = _validate.class_param_shape(
            name, t.shape, name in loss.per_class, n_classes, x.dim()
        )
        t = t.reshape(shape)
        ps.append(t)
    w = None
    if weight is not None:
        w = _as_tensor("weight", weight, input)
        _validate.check_sample_weight(w.shape, sample_shape)
        w = torch.broadcast_to(w, sample_shape).reshape(keep_shape)
    return {
        "x": x,
        "target": tgt,
        "mode": mode,
        "zeros": zeros,
        "valid": valid,
        "weight": w,
        "params": ps,
        "sample_shape": sample_shape,
    }


def _kernel(loss: Loss, mode: str, wrt: tuple[str, ...], zeros: frozenset[str]) -> Any:
    """``loss._class_kernel("torch", mode, wrt, True, zeros)``; inside a torch.compile
    trace, where no kernel can be generated, the general kernel (``Loss.prepare`` built
    it) stands in for a zero-specialised one that was never built (a per-call 0)."""
    if _tracing():
        built = loss._class_kernel("torch", mode, wrt, True, zeros, only_built=True)
        if built is None:
            built = loss._class_kernel("torch", mode, wrt, True, frozenset(), only_built=True)
        if built is not None:
            return built
    return loss._class_kernel("torch", mode, wrt, True, zeros)


class ClassLossFunction(torch.autograd.Function):
    """Fused forward/backward of a class-axis loss.

    ``apply(loss, mode, reduction, sample_shape, zeros, fused, weight, valid, x, target,
    *params)`` returns ``(loss, mean denominator)``; ``zeros`` names the params passed
    as the number 0 (see ``Loss._zeroed``); ``fused`` as for the elementwise
    :class:`~customloss.torch_backend.LossFunction` (here it captures the derivative
    buffers of the class kernel). In the ``setup_context`` style with
    ``generate_vmap_rule``, for ``torch.func``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        loss: Loss,
        mode: str,
        reduction: str,
        sample_shape: tuple,
        zeros: frozenset[str],
        fused: _Fused | bool,
        weight: torch.Tensor | None,
        valid: torch.Tensor | None,
        x: torch.Tensor,
        target: torch.Tensor,
        *params: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cdt = _compute_dtype(x.dtype)
        args = [
            x.to(cdt),
            target if mode == "index" else target.to(cdt),
            *(p.to(cdt) for p in params),
        ]
        has_norm = mode == "index" and loss.index_mean_weight is not None
        wrt = (loss.inputs[0],) if fused else ()
        kernel = _kernel(loss, mode, wrt, zeros)
        outs = fast.kernel_callable(kernel, tuple(args))(*args)
        values = outs[0]
        norm = outs[1] if has_norm else None
        if isinstance(fused, _Fused):
            start = 2 if has_norm else 1
            fused.grad = outs[start:]
            # (changed in place by the caller since, e.g. through the "none" output:
            # backward recomputes)
            fused.version = [t._version for t in fused.grad]
            inputs = (x, target, weight, valid, *params, *args)
            # which saved buffers are ours alone (see _owned)
            fused.owned = [
                _owned(outs[i], (*inputs, *outs[:i], *outs[i + 1 :]))
                for i in range(start, len(outs))
            ]
        if valid is not None:
            values = torch.where(valid, values, torch.zeros_like(values))
        if weight is not None:
            values = values * weight.to(cdt)
        if reduction == "mean":
            if mode == "index" and norm is not None:
                den = (norm if valid is None else torch.where(valid, norm, 0.0)).sum()
            elif mode == "index" and valid is not None:
                den = valid.sum().to(cdt)
            else:
                den = torch.full((), float(values.numel()), dtype=cdt, device=values.device)
            out = values.sum() / den
        else:
            den = torch.ones((), dtype=cdt, device=values.device)  # (unused)
            if reduction == "sum":
                out = values.sum()
            else:
                # not a view of the kernel's (N, 1, ...) buffer: autograd refuses
                # in-place changes of a custom Function's view outputs (`loss *= mask`),
                # and F.cross_entropy's "none" output allows them
                out = values.reshape(sample_shape)
                if out._base is not None:
                    out = out.clone()
        return out.to(x.dtype), den

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        loss, mode, reduction, _, zeros, fused, weight, valid, x, target, *params = inputs
        den = output[1]
        ctx.mark_non_differentiable(den)
        ctx.loss, ctx.mode, ctx.reduction = loss, mode, reduction
        ctx.sample_shape = tuple(inputs[3])
        ctx.cdt = _compute_dtype(x.dtype)
        ctx.has_weight, ctx.zeros = weight is not None, zeros
        ctx.fused = fused if isinstance(fused, _Fused) else None
        ctx.save_for_backward(weight, valid, x, target, den, *params)
        ctx.save_for_forward(weight, valid, x, target, den, *params)

    @staticmethod
    def backward(
        ctx: Any, gout: torch.Tensor, _gden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        weight, valid, x, target, den, *params = ctx.saved_tensors
        loss, mode, cdt = ctx.loss, ctx.mode, ctx.cdt
        # needs_input_grad: (loss, mode, reduction, sample_shape, zeros, fused, weight,
        # valid, x, target, *params)
        needs = ctx.needs_input_grad
        names = [*loss.inputs, *loss.params]
        tensors = (x, target, *params)
        wrt = tuple(n for n, need in zip(names, needs[8:], strict=False) if need)
        want_w = ctx.has_weight and needs[6]
        keep = (x.shape[0], 1, *x.shape[2:])
        g = gout.to(cdt)
        if ctx.reduction == "none":
            g = g.reshape(keep)
        elif ctx.reduction == "mean":
            g = g / den
        scale = g if weight is None else g * weight.to(cdt)
        if valid is not None:
            scale = scale * valid.to(cdt)
        ignored = None if valid is None else ~valid

        def masked(a: torch.Tensor) -> torch.Tensor:
            # ignored positions give exactly 0, also where the derivative at their
            # stand-in target class is inf/nan (0 * inf would be nan); `a` is fresh
            return a if ignored is None else a.masked_fill_(ignored, 0.0)

        in_place, owned = False, []
        fused = ctx.fused
        buffers = None if fused is None else fused.grad
        if fused is not None:
            fused.grad = None  # used once (see below)
        if (
            buffers is not None
            and fused.version == [t._version for t in buffers]
            and not torch.is_grad_enabled()
        ):
            outs = list(buffers)
            owned = list(fused.owned)
            # used once: the saved buffers become the gradient (scaled in place); a
            # second backward (retain_graph=True) recomputes from the saved inputs
            in_place = True
            value = None
        else:
            args = [
                x.to(cdt),
                target if mode == "index" else target.to(cdt),
                *(p.to(cdt) for p in params),
            ]
            # the value is always part of the recompute kernel: without a graph this is
            # the kernel the fused forward ran, so a second backward gives the same bits
            kernel = _kernel(loss, mode, wrt, ctx.zeros)
            run = (
                kernel.fn if torch.is_grad_enabled() else fast.kernel_callable(kernel, tuple(args))
            )
            outs = list(run(*args))
            value = outs.pop(0)
            if mode == "index" and loss.index_mean_weight is not None:
                outs.pop(0)
        result: list[torch.Tensor | None] = [None] * 8
        if want_w:
            v = value * g
            if valid is not None:
                v = torch.where(valid, v, torch.zeros_like(v))
            result[6] = v.to(weight.dtype)
        for n, t in zip(names, tensors, strict=False):
            if n not in wrt:
                result.append(None)
                continue
            d = outs.pop(0)
            if n not in loss.per_class:
                result.append(masked(d * scale).sum().reshape(t.shape).to(t.dtype))
                continue
            own = in_place and owned[0] and _scalable_in_place(d, t, cdt)
            dense = masked(d.mul_(scale) if own else d * scale)
            gathers = mode == "index" and loss._index_gathers()
            at = masked(outs.pop(0) * scale) if gathers else None
            if n in loss.inputs:  # the prediction (or a probability target)
                if at is not None:  # dense is this backward's own buffer: add in place
                    dense = dense.scatter_add_(1, target, at.to(dense.dtype))
                result.append(dense.to(t.dtype))
            else:  # a per-class param: (1, C, 1, ...) or a 0-d scalar
                red = _sum_to(dense, t.shape) if t.dim() else dense.sum()
                if at is not None:
                    extra = torch.zeros(x.shape[1], dtype=dense.dtype, device=dense.device)
                    extra = extra.index_add(0, target.reshape(-1), at.reshape(-1))
                    red = red + (extra.reshape(t.shape) if t.dim() else extra.sum())
                result.append(red.to(t.dtype))
        return tuple(result)


class _ClassLossFunctionJVP(ClassLossFunction):
    """:class:`ClassLossFunction` with forward-mode AD (``jvp``), for eager calls (a
    class of its own: Dynamo cannot trace a Function defining ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[torch.Tensor, None]:
        """Forward-mode AD: the directional derivative from the symbolic derivatives.

        Per sample: ``sum_c dL/dz_c t_c`` for a per-class tensor (with class-index
        targets plus the at-target part, as backward's ``scatter_add``), ``dL/dp t``
        for a scalar param; then the weight, the ignored positions and the reduction
        as in forward (the mean's denominator is constant: params inside it are
        refused, as in reverse mode).
        """
        t_weight, _, *t_rest = tangents[6:]
        weight, valid, x, target, den, *params = ctx.saved_tensors
        loss, mode, cdt = ctx.loss, ctx.mode, ctx.cdt
        names = [*loss.inputs, *loss.params]
        tensors = (x, target, *params)
        # (torch passes zeros for inputs without a tangent; params inside the weighted
        # mean's denominator have none: evaluate refused those that do)
        fixed = _denominator_params(loss) if mode == "index" and ctx.reduction == "mean" else ()
        moving = [
            (n, t) for n, t in zip(names, t_rest, strict=True) if t is not None and n not in fixed
        ]
        wrt = tuple(n for n, _ in moving)
        args = [
            x.to(cdt),
            target if mode == "index" else target.to(cdt),
            *(p.to(cdt) for p in params),
        ]
        outs = list(_kernel(loss, mode, wrt, ctx.zeros).fn(*args))
        value = outs.pop(0)
        if mode == "index" and loss.index_mean_weight is not None:
            outs.pop(0)
        gathers = mode == "index" and loss._index_gathers()
        by_name = dict(zip(names, tensors, strict=False))
        dv = torch.zeros_like(value)
        for n, t in moving:
            d = outs.pop(0)
            t = t.to(cdt)
            if n not in loss.per_class:  # a scalar param: a per-sample derivative
                d = d.sum(1, keepdim=True) if d.dim() > 1 and d.shape[1] != 1 else d
                dv = dv + d * t.reshape(())
                continue
            if t.numel() == 1:  # one value for every class
                dv = dv + (d * t.reshape(())).sum(1, keepdim=True)
            else:
                dv = dv + (d * t.expand_as(d) if t.shape != d.shape else d * t).sum(1, keepdim=True)
            if gathers:
                at = outs.pop(0)
                if t.numel() == 1:
                    dv = dv + at * t.reshape(())
                elif by_name[n] is x:
                    dv = dv + at * t.gather(1, target)
                else:
                    dv = dv + at * t.reshape(-1)[target]
        if weight is not None:
            dv = dv * weight.to(cdt)
            if t_weight is not None:
                dv = dv + value * t_weight.to(cdt)
        if valid is not None:
            dv = torch.where(valid, dv, torch.zeros_like(dv))
        if ctx.reduction == "mean":
            out = dv.sum() / den
        elif ctx.reduction == "sum":
            out = dv.sum()
        else:
            out = dv.reshape(ctx.sample_shape)
        return out.to(x.dtype), None


def _denominator_params(loss: Loss) -> frozenset[str]:
    """Params in the weighted mean's denominator (class-index targets)."""
    if loss.index_mean_weight is None:
        return frozenset()
    return frozenset(s.name for s in loss.index_mean_weight.free_symbols) & set(loss.params)


def _has_tangent(t: torch.Tensor) -> bool:
    """Whether ``t`` is a forward-mode dual tensor (``torch.autograd.forward_ad``)."""
    if _no_forward_ad() or _tracing():
        return False
    return torch.autograd.forward_ad.unpack_dual(t).tangent is not None


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
) -> torch.Tensor:
    """Evaluate a class-axis ``loss`` on tensors (see ``Loss.__call__``)."""
    prep = _prepare(loss, input, target, weight, params, class_dim, ignore_index)
    x, target_, w, *ps = _autocast_float32(
        prep["x"],
        None if prep["mode"] == "index" else prep["target"],
        prep["weight"],
        *prep["params"],
    )
    prep.update(x=x, weight=w, params=ps)
    if prep["mode"] == "prob":
        prep["target"] = target_
    if prep["mode"] == "index" and reduction == "mean":
        learned = [
            n
            for n, p in zip(loss.params, prep["params"], strict=True)
            if p.requires_grad or _has_tangent(p)
        ]
        _validate.check_mean_denominator(loss, learned)
    # (the target too: a probability target needing a gradient, or one under vmap)
    fused = _fused_request(prep["x"], prep["target"], prep["weight"], *prep["params"])
    args = (
        loss,
        prep["mode"],
        reduction,
        prep["sample_shape"],
        prep["zeros"],
        fused,
        prep["weight"],
        prep["valid"],
        prep["x"],
        prep["target"],
        *prep["params"],
    )
    tensors = (prep["x"], prep["target"], prep["weight"], *prep["params"])
    if _nested_forward_ad():
        # the forward's plain operations, differentiated by the transforms themselves
        out, _ = ClassLossFunction.forward(*args[:5], False, *args[6:])
        return out
    if not _differentiable(*tensors):
        with torch.no_grad():
            out, _ = ClassLossFunction.forward(*args)  # (see torch_backend.evaluate)
    else:
        function = ClassLossFunction if _tracing() else _ClassLossFunctionJVP
        out, _ = _apply(function, args, tensors)
    return out
