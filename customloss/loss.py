"""The ``Loss`` object and the two ways to build one: ``@loss`` and ``define``.

A ``Loss`` holds the elementwise loss as a plain SymPy expression over symbols named
after its inputs (prediction first, then target) and its params.  It differentiates
itself symbolically, prints itself, and compiles itself (lazily, once per backend and
kernel signature, shared by every ``Loss`` with the same mathematics) into NumPy and
PyTorch callables.
"""

from __future__ import annotations

import inspect
import keyword
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from customloss import _validate, dsl
from customloss._lazy import LazyModule, sympy

# SymPy and the modules built on it load on first use: `import customloss` stays cheap
calculus: Any = LazyModule("customloss.calculus")
codegen: Any = LazyModule("customloss.codegen")
diskcache: Any = LazyModule("customloss.diskcache")

__all__ = ["Loss", "define", "loss"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ParamDefault = float | tuple[float, ...] | None


def _singular() -> tuple[Any, ...]:
    """The SymPy values that make an expression non-finite (sympy loads lazily)."""
    return (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo)


def _input_names(loss_name: str, inputs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(inputs, str):  # tuple("py") would be ("p", "y")
        raise TypeError(
            f"loss {loss_name!r}: inputs must be a sequence of two names such as "
            f"('p', 'y'), got the string {inputs!r}"
        )
    return tuple(inputs)


def _check_identifier(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _IDENT_RE.match(name) or keyword.iskeyword(name):
        raise ValueError(f"{kind} name {name!r} is not a valid identifier")
    if name in dsl.FUNCTIONS:
        raise ValueError(f"{kind} name {name!r} clashes with the DSL function {name}()")


def _normalise_default(name: str, value: Any) -> ParamDefault:
    if value is None:
        return None
    if getattr(value, "requires_grad", False):
        raise TypeError(
            f"param {name!r}: a default is a number, and this tensor requires grad (a "
            "learnable param): pass it per call, loss(input, target, "
            f"{name}=tensor), or to Loss.torch({name}=nn.Parameter(...))"
        )
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):
        # NumPy arrays and tensors: defaults are stored as plain numbers (a learnable
        # tensor param is passed at call time instead)
        value = value.tolist()
    if isinstance(value, bool):
        raise TypeError(f"param {name!r}: default must be a number, got a bool")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        if not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"param {name!r}: a vector default must be a non-empty list of numbers")
        return tuple(float(v) for v in value)
    raise TypeError(
        f"param {name!r}: default must be a number, a list of numbers or None, got {value!r}"
    )


# ---------------------------------------------------------------------------
# compiled artefacts, shared by all Loss objects with the same mathematics
# ---------------------------------------------------------------------------
_ARTEFACTS: dict[tuple, Any] = {}
_ARTEFACT_LOCKS: dict[tuple, threading.Lock] = {}
_GLOBAL_LOCK = threading.Lock()
#: How many kernels were made in this process (generated, or read back from the disk
#: cache by :mod:`customloss.diskcache`), for the cache's tests.
kernel_builds = 0


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """Build ``key`` once per process, also when many threads ask at once."""
    hit = _ARTEFACTS.get(key)
    if hit is not None:
        return hit
    with _GLOBAL_LOCK:
        lock = _ARTEFACT_LOCKS.setdefault(key, threading.Lock())
    with lock:
        hit = _ARTEFACTS.get(key)
        if hit is None:
            hit = build()
            _ARTEFACTS[key] = hit
        return hit


class Loss:
    """An elementwise loss designed as mathematics.

    Build one with :func:`loss` (decorator) or :func:`define` (string). Call it like a
    ``torch.nn.functional`` loss::

        value = my_loss(input, target, reduction="mean", weight=None, **param_overrides)

    Attributes:
        name: the loss name.
        inputs: input names, prediction first, then target.
        params: param name -> default (``None`` means required at call time).
        expr: the elementwise loss as plain SymPy.
        doc: documentation text.
        classes: whether the inputs carry a class axis.
        references: literature references (free text).
        domains: input or param name -> declared value domain (see :func:`loss`).
    """

    def __init__(
        self,
        name: str,
        expr: sympy.Expr,
        *,
        inputs: Sequence[str],
        params: Mapping[str, Any] | None = None,
        classes: bool = False,
        doc: str | None = None,
        references: Sequence[str] = (),
        source_text: str | None = None,
        index_mean_weight: sympy.Expr | str | None = None,
        class_params: Sequence[str] = (),
        domains: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"loss name {name!r} must start with a letter or '_' "
                "and contain only letters, digits, '_', '.', '-'"
            )
        inputs = _input_names(name, inputs)
        if len(inputs) != 2:
            raise ValueError(
                f"loss {name!r}: inputs must name exactly two inputs "
                f"(prediction, target), got {inputs!r}"
            )
        params = dict(params or {})
        for n in (*inputs, *params):
            _check_identifier("input" if n in inputs else "param", n)
        dup = set(inputs) & set(params)
        if dup or len(set(inputs)) != 2:
            raise ValueError(f"loss {name!r}: names used twice: {sorted(dup) or list(inputs)}")
        if not isinstance(expr, sympy.Expr):
            raise TypeError(f"loss {name!r} must be a SymPy expression, got {type(expr).__name__}")
        expr = sympy.sympify(expr)
        known = {n: dsl.symbol(n) for n in (*inputs, *params)}
        by_name = {s.name: s for s in known.values()}
        # Symbols users built themselves (sympy.Symbol("p")) are mapped onto ours.
        foreign = {
            s: by_name[s.name]
            for s in expr.free_symbols
            if s.name in by_name and s not in known.values()
        }
        if foreign:
            expr = expr.xreplace(foreign)
        unknown = sorted(s.name for s in expr.free_symbols if s.name not in by_name)
        if unknown:
            raise ValueError(f"loss {name!r}: unknown symbol {unknown[0]!r}")
        if expr.has(sympy.I) or expr.has(*_singular()):
            raise ValueError(f"loss {name!r}: the expression is not a finite real expression")
        if bad_functions := codegen.uncompilable(expr):
            raise ValueError(
                f"loss {name!r}: no compiled form for the function {bad_functions[0]!r}; "
                "the SymPy functions that compile are "
                + ", ".join(sorted(codegen.USER_FUNCTIONS, key=str.lower))
                + " (and the DSL's, see docs/dsl.md)"
            )
        self.name = name
        self.inputs: tuple[str, ...] = inputs
        self.params: dict[str, ParamDefault] = {
            k: _normalise_default(k, v) for k, v in params.items()
        }
        self.expr: sympy.Expr = expr
        self.classes = bool(classes)
        self.doc = inspect.cleandoc(doc) if doc else ""
        # one string is one reference, not a sequence of characters
        self.references: tuple[str, ...] = (
            (references,) if isinstance(references, str) else tuple(references)
        )
        self._symbols = known
        self._source_text = source_text
        # class axis: per-class symbols are the inputs and the vector/None params
        self.per_class: tuple[str, ...] = ()
        self.index_mean_weight: sympy.Expr | None = None
        if self.classes:
            for k in class_params:
                if k not in self.params:
                    raise ValueError(f"loss {name!r}: class_params names unknown param {k!r}")
            self.per_class = tuple(inputs) + tuple(
                k
                for k, v in self.params.items()
                if v is None or isinstance(v, tuple) or k in class_params
            )
            outside = calculus.per_class_outside_reductions(
                expr, [known[n] for n in self.per_class]
            )
            if outside:
                bad = sorted(s.name for s in outside)[0]
                raise ValueError(
                    f"loss {name!r}: {bad!r} has a class axis but is used outside a class "
                    "reduction; reduce it with csum(), logsumexp(), cmax(), ..."
                )
            if index_mean_weight is not None:
                if isinstance(index_mean_weight, str):
                    from customloss import parse

                    index_mean_weight = parse.parse_expression(
                        index_mean_weight, symbols=[*inputs, *params]
                    )
                self.index_mean_weight = sympy.sympify(index_mean_weight).xreplace(foreign)
        elif index_mean_weight is not None or class_params:
            if class_params:
                raise ValueError(f"loss {name!r}: class_params needs classes=True")
            raise ValueError(f"loss {name!r}: index_mean_weight needs classes=True")
        elif (calc := sys.modules.get("customloss.calculus")) is not None:
            # (class reductions are defined in calculus: before it is imported, an
            # expression cannot contain one, and the import is skipped, ~20 ms)
            reds = [a for a in expr.atoms(sympy.Function) if isinstance(a, calc.CLASS_REDUCTIONS)]
            if reds:
                raise ValueError(
                    f"loss {name!r} uses the class reduction {reds[0]} but was not "
                    "declared with classes=True"
                )
        #: input or param name -> value domain (a name in ``_validate.DOMAINS`` such as
        #: "probability", "sign", "positive", or an interval such as "[0, 1)"); inputs
        #: are checked when the loss is called with validate=True, params whenever a
        #: value is given as a number, list or array (see ``_validate.check_param_domains``)
        self.domains: dict[str, str] = dict(domains or {})
        for k, d in self.domains.items():
            if k not in inputs and k not in self.params:
                raise ValueError(
                    f"loss {name!r}: domains names {k!r}, which is not an input or a param"
                )
            try:
                _validate.domain_interval(d)
            except ValueError as e:
                raise ValueError(f"loss {name!r}: domain of {k!r}: {e}") from None
        _validate.check_param_domains(name, self.domains, self.params, tensors=True)
        #: call options of class-axis losses (overridable per call and by with_defaults)
        self.options: dict[str, Any] = (
            {"class_dim": None, "ignore_index": -100} if self.classes else {}
        )
        #: option name -> factory(value) -> Loss: a *variant* of this loss chosen by
        #: ``with_defaults``/``cl.get`` (e.g. ``class_balanced`` with ``base="focal"``)
        self.variants: dict[str, Callable[[Any], Loss]] = {}
        self._key = (
            sympy.srepr(expr),
            self.inputs,
            tuple(self.params),
            self.per_class,
            sympy.srepr(self.index_mean_weight),
        )

    # -- symbols and calculus ---------------------------------------------
    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        """Name -> SymPy symbol, for every input and param."""
        return dict(self._symbols)

    def _symbol(self, wrt: str | sympy.Symbol | None) -> sympy.Symbol:
        if wrt is None:
            return self._symbols[self.inputs[0]]
        name = wrt.name if isinstance(wrt, sympy.Symbol) else wrt
        if name not in self._symbols:
            raise ValueError(
                f"loss {self.name!r} has no symbol {name!r}; "
                f"choose one of {', '.join(self._symbols)}"
            )
        return self._symbols[name]

    def grad(
        self,
        wrt: str | sympy.Symbol | None = None,
        order: int = 1,
        *,
        given_target_sum: float | None = 1,
    ) -> sympy.Expr:
        """Symbolic derivative of the unreduced elementwise loss.

        For a ``classes=True`` loss and a per-class symbol, this is the derivative with
        respect to that symbol's entry at one class ``j`` (per-class symbols in the
        result mean "at class j"); class reductions stay as ``csum(...)`` etc.

        Args:
            wrt: an input or param name (or its Symbol); default the prediction.
            order: derivative order (2 for the second derivative, ...).
            given_target_sum: for class-axis losses, substitute ``csum(y)`` by this
                value (targets are distributions: 1); ``None`` keeps it.

        Returns:
            A plain SymPy expression in this loss's symbols.
        """
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive integer, got {order!r}")
        sym = self._symbol(wrt)
        if self.classes and order != 1:
            raise NotImplementedError("higher class-axis derivatives are not available")
        key = ("grad", self._key, sym.name, order, given_target_sum)
        return _cached(
            key, lambda: _stored_expr(key, lambda: self._grad(sym, order, given_target_sum))
        )

    def _grad(self, sym: sympy.Symbol, order: int, given_target_sum: float | None) -> sympy.Expr:
        if not self.classes:
            return calculus.derivative(self.expr, sym, order)
        per_class = [self._symbols[n] for n in self.per_class]
        if sym.name in self.per_class:
            d = calculus.class_derivative(self.expr, sym)
        else:
            d = calculus.derivative(self.expr, sym)
        d = calculus.simplify_reductions(d, per_class)
        if given_target_sum is not None:
            y = self._symbols[self.inputs[1]]
            d = d.xreplace({calculus.CSum(y): sympy.sympify(given_target_sum)})
        return d

    def latex(self) -> str:
        """The elementwise loss in LaTeX."""
        return sympy.latex(self.expr)

    def grad_latex(self, wrt: str | sympy.Symbol | None = None) -> str:
        """The derivative (see :meth:`grad`) in LaTeX."""
        return sympy.latex(self.grad(wrt))

    @property
    def stable_expr(self) -> sympy.Expr:
        """The numerically stable form the compilers use (internal functions)."""
        return _cached(("stable", self._key), lambda: calculus.stabilize(self.expr))

    def _stable_derivative(self, wrt: str) -> sympy.Expr:
        return _cached(
            ("dstable", self._key, wrt),
            lambda: calculus.stable_derivatives(self.stable_expr, [self._symbols[wrt]])[0],
        )

    # -- code generation ----------------------------------------------------
    def _kernel(
        self,
        backend: str,
        wrt: tuple[str, ...],
        value: bool | None = None,
        *,
        fast: bool = False,
    ) -> codegen.Kernel:
        """The generated kernel returning the value (if requested) and derivatives.

        ``fast=True``: an evaluate-only variant with fewer transcendental calls
        (``codegen.lower_for_speed``), for forward passes; recomputation that must be
        differentiable uses the default kernel.
        """
        if self.classes:
            raise TypeError("class-axis losses use _class_kernel")
        if value is None:
            value = not wrt
        key = ("kernel", self._key, backend, value, wrt, fast)

        def generate() -> codegen.Kernel:
            outs = [("value", self.stable_expr)] if value else []
            outs += [(f"d_{n}", self._stable_derivative(n)) for n in wrt]
            args = [self._symbols[n] for n in (*self.inputs, *self.params)]
            return codegen.generate_kernel(
                "_".join([self.name, backend, *[lbl for lbl, _ in outs]]),
                args,
                outs,
                _runtime(backend),
                shape_args=[self._symbols[n] for n in self.inputs],
                fast=fast,
                # torch's differentiable recomputation (create_graph, forward AD)
                guard_branches=backend == "torch" and not fast,
            )

        return _cached(key, lambda: _stored_kernel(key, backend, generate))

    # -- class-axis code generation --------------------------------------------
    def _gathered(self) -> dict[sympy.Symbol, sympy.Symbol]:
        """Per-class symbols (but the target) -> symbols for their value at the target."""
        y = self.inputs[1]
        return {
            self._symbols[n]: sympy.Symbol(f"{n}@target", real=True)
            for n in self.per_class
            if n != y
        }

    def _index_gathers(self) -> bool:
        """Whether class-index targets are gathered (else a one-hot is materialised).

        Gathering needs the target only linearly inside ``csum`` (the cross-entropy
        family); otherwise the kernels build the one-hot from the indices.
        """

        def build() -> bool:
            y = self._symbols[self.inputs[1]]
            per_class = [self._symbols[n] for n in self.per_class]
            try:
                for e in (self.expr, self.index_mean_weight):
                    if e is not None:
                        calculus.gather_targets(e, y, per_class, self._gathered())
            except calculus.NonLinearTargetError:
                return False
            return True

        return _cached(("gathers", self._key), build)

    def _zeroed(self, expr: sympy.Expr, zeros: frozenset[str]) -> sympy.Expr | None:
        """``expr`` with the params in ``zeros`` set to 0, or None where that is singular.

        Params passed as the plain number 0 carry no gradient, so the kernels may drop
        every term they multiply (cross_entropy without label smoothing then skips the
        smoothing term's pass over the classes).  Where substituting 0 leaves
        ``nan``/``zoo``/``oo`` (a ``1/alpha`` outside its ``where``) the caller uses the
        general kernel, whose runtime branches handle it.
        """
        if not zeros:
            return expr
        out = expr.subs({self._symbols[n]: sympy.S.Zero for n in sorted(zeros)})
        return None if out.has(*_singular()) else out

    def _class_stable(
        self, mode: str, what: str = "value", zeros: frozenset[str] = frozenset()
    ) -> sympy.Expr:
        def build() -> sympy.Expr:
            expr = self.expr if what == "value" else self.index_mean_weight
            expr = self._zeroed(expr, zeros)
            if expr is None:  # _class_kernel checks first
                raise RuntimeError(f"{self.name}: cannot specialise to zero {sorted(zeros)}")
            if mode == "index" and self._index_gathers():
                y = self._symbols[self.inputs[1]]
                per_class = [self._symbols[n] for n in self.per_class]
                expr = calculus.gather_targets(expr, y, per_class, self._gathered())
            return calculus.stabilize(expr)

        return _cached(("cstable", self._key, mode, what, zeros), build)

    def _class_derivatives(
        self, mode: str, wrt: str, zeros: frozenset[str] = frozenset()
    ) -> list[tuple[str, sympy.Expr, str]]:
        """``(label, expression, shape)`` outputs for the derivative w.r.t. ``wrt``."""

        def build() -> list[tuple[str, sympy.Expr, str]]:
            per_class = [self._symbols[n] for n in self.per_class]
            E = self._class_stable(mode, zeros=zeros)
            v = self._symbols[wrt]

            def tidy(e: sympy.Expr) -> sympy.Expr:
                return calculus.simplify_reductions(calculus._tidy(e), per_class)

            if wrt not in self.per_class:
                return [(f"d_{wrt}", tidy(calculus.derivative(E, v)), "sample")]
            outs = [(f"d_{wrt}", tidy(calculus.class_derivative(E, v)), "full")]
            if mode == "index" and self._index_gathers():
                at = self._gathered()[v]
                outs.append((f"d_{wrt}@target", tidy(calculus.derivative(E, at)), "sample"))
            return outs

        return _cached(("cderiv", self._key, mode, wrt, zeros), build)

    def _class_kernel(
        self,
        backend: str,
        mode: str,
        wrt: tuple[str, ...],
        value: bool,
        zeros: frozenset[str] = frozenset(),
        *,
        only_built: bool = False,
    ) -> codegen.Kernel:
        """Kernel for a class-axis loss; ``mode`` is ``"prob"`` or ``"index"``.

        ``zeros``: params the caller passes as the number 0 (never one in ``wrt``); the
        kernel is specialised to them (see :meth:`_zeroed`) and keeps its signature.
        ``only_built``: the kernel if it exists already, else ``None`` (a dict lookup,
        no lock: what a torch.compile trace may do).
        """
        zeros = frozenset(zeros) - set(wrt)
        key = ("ckernel", self._key, backend, mode, value, wrt, zeros)
        if only_built:
            return _ARTEFACTS.get(key)

        def generate() -> codegen.Kernel:
            # where substituting 0 is singular (in the loss or, below, in a derivative:
            # e.g. 0**n * log(0)), the general kernel (same signature and outputs) serves
            # this key; its runtime guards handle the zero.  Decided once per key.
            if zeros and any(
                self._zeroed(e, zeros) is None
                for e in (self.expr, self.index_mean_weight)
                if e is not None
            ):
                return self._class_kernel(backend, mode, wrt, value)
            z, y = (self._symbols[n] for n in self.inputs)
            params = [self._symbols[n] for n in self.params]
            outs: list[tuple[str, sympy.Expr]] = []
            shapes: list[str | None] = []
            if value:
                outs.append(("value", self._class_stable(mode, zeros=zeros)))
                shapes.append("sample")
                if mode == "index" and self.index_mean_weight is not None:
                    outs.append(("norm", self._class_stable(mode, "norm", zeros)))
                    shapes.append("sample")
            for n in wrt:
                for label, e, shape in self._class_derivatives(mode, n, zeros):
                    outs.append((label, e))
                    shapes.append(shape)
            if zeros and any(e.has(*_singular()) for _, e in outs):
                return self._class_kernel(backend, mode, wrt, value)
            gathers = mode == "index" and self._index_gathers()
            gathered = self._gathered()
            # in terms of z - max_c z where that is exact (float32 precision of the
            # softmax family at large logits; see calculus.shift_by_class_max)
            shift = calculus.shift_by_class_max(
                outs,
                z,
                gathered.get(z) if gathers else None,
                [self._symbols[n] for n in self.per_class],
            )
            prelude = []
            if shift is not None:
                outs, zs, zs_target = shift
                prelude.append((zs, "cshift", [z]))
                gathered = {**gathered, zs: zs_target}
            used = set().union(*(e.free_symbols for _, e in outs))
            if mode == "index":
                idx = sympy.Symbol("target@index", real=True)
                args = [z, idx, *params]
                if not gathers:
                    prelude.append((y, "onehot", [idx, z]))
                for s, g in gathered.items():
                    if g in used:
                        op = "gather" if s in (z, shift and shift[1]) else "take"
                        prelude.append((g, op, [s, idx]))
            else:
                args = [z, y, *params]
            return codegen.generate_kernel(
                "_".join([self.name, backend, mode, *[lbl for lbl, _ in outs]]).replace(
                    "@", "_at_"
                ),
                args,
                outs,
                _runtime(backend),
                prelude=prelude,
                expand=shapes,
            )

        return _cached(key, lambda: _stored_kernel(key, backend, generate))

    def source(self, backend: str = "torch", wrt: Sequence[str] | None = None) -> str:
        """The generated code, for inspection.

        Args:
            backend: ``"torch"`` or ``"numpy"``.
            wrt: derivatives to include; default: the value kernel and the fused
                value-and-gradient kernel for the prediction.
        """
        if backend not in ("torch", "numpy"):
            raise ValueError(f"unknown backend {backend!r}; valid backends are 'torch', 'numpy'")
        if self.classes:
            names = tuple(wrt) if wrt is not None else (self.inputs[0],)
            for n in names:
                self._symbol(n)
            return "\n".join(
                self._class_kernel(backend, mode, names, True).source for mode in ("prob", "index")
            )
        if wrt is None:
            parts = [
                self._kernel(backend, ()).source,
                self._kernel(backend, (self.inputs[0],), value=True).source,
            ]
            return "\n".join(parts)
        for n in wrt:
            self._symbol(n)
        return self._kernel(backend, tuple(wrt), value=True).source

    # -- calling ------------------------------------------------------------
    def resolve_params(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults merged with ``overrides``; unknown or missing params raise TypeError."""
        return _validate.resolve_params(self.name, self.params, overrides)

    def __call__(
        self,
        input: Any,
        target: Any,
        *,
        reduction: str = "mean",
        weight: Any = None,
        validate: bool = False,
        **params: Any,
    ) -> Any:
        """Evaluate the loss.

        Args:
            input: predictions; a ``torch.Tensor`` selects the Torch backend (autograd
                works), anything else the NumPy backend.
            target: targets, same shape as ``input``.
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.
            weight: multiplies the elementwise loss before reducing; must broadcast to
                the input's shape.
            validate: check the inputs' value domains declared by the loss (e.g.
                hinge targets in {-1, +1}, probabilities in [0, 1]) and those of
                params given as tensors, and raise ``ValueError`` naming the argument
                (costs a pass over the data).  Params given as numbers, lists or
                arrays are checked against their domains on every call.
            **params: per-call param values (scalars, arrays or tensors broadcasting
                to the input's shape).

        Returns:
            A 0-d tensor / NumPy scalar for ``"mean"`` and ``"sum"``, else an
            elementwise tensor / array.
        """
        _validate.check_reduction(reduction)
        values, options = self._call_arguments(params, validate=validate)
        if validate:
            for name, arg in zip(self.inputs, (input, target), strict=True):
                if name in self.domains:
                    what = f"{'input' if name == self.inputs[0] else 'target'} {name!r}"
                    indices = self.classes and name == self.inputs[1]
                    _validate.check_domain(what, arg, self.domains[name], indices=indices)
        backend = _backend(self, torch=_is_torch(input) or _is_torch(target))
        return backend.evaluate(
            self, input, target, reduction=reduction, weight=weight, params=values, **options
        )

    def _call_arguments(
        self, params: dict[str, Any], *, validate: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split call keywords into resolved param values and call options, checking
        the given params' domains (tensors only when ``validate``)."""
        options = {k: params.pop(k) for k in list(params) if k in self.options}
        values = self.resolve_params(params)
        _validate.check_param_domains(self.name, self.domains, params, tensors=validate)
        return values, {**self.options, **options}

    def gradient(
        self,
        input: Any,
        target: Any,
        *,
        wrt: str | None = None,
        reduction: str = "mean",
        weight: Any = None,
        **params: Any,
    ) -> Any:
        """NumPy gradient of the reduced loss from the symbolic derivative.

        Args:
            input, target, reduction, weight, params: as for calling the loss.
            wrt: an input or param name; default the prediction.

        Returns:
            An array shaped like the ``wrt`` argument (elementwise for ``"none"``).
        """
        _validate.check_reduction(reduction)
        name = self._symbol(wrt).name
        values, options = self._call_arguments(params)
        return _backend(self, torch=False).gradient(
            self,
            input,
            target,
            wrt=name,
            reduction=reduction,
            weight=weight,
            params=values,
            **options,
        )

    def torch(self, *, reduction: str = "mean", **params: Any) -> Any:
        """A ``torch.nn.Module`` criterion; params become buffers.

        Args:
            reduction: the module's reduction (a call may choose another).
            **params: param values overriding the defaults (stored as float64
                buffers; an ``nn.Parameter`` becomes the module's learnable
                parameter); call options (``ignore_index``, ``class_dim``) and variants
                (``base``) as in :meth:`with_defaults`.
        """
        from customloss import torch_backend

        chosen = {k: params.pop(k) for k in list(params) if k in self.options or k in self.variants}
        loss = self.with_defaults(**chosen) if chosen else self
        return torch_backend.LossModule(loss, reduction=reduction, **params)

    def prepare(self, wrt: Sequence[str] = ()) -> Loss:
        """Generate now the Torch kernels that calls of this loss use; returns ``self``.

        Calling a loss generates its kernels on first use (SymPy work: tens of ms per
        loss, or a few ms from the disk cache).  ``torch.compile(..., fullgraph=True)``
        cannot trace that work, so a loss called inside such a region must be
        prepared first; :meth:`torch` does it for its module.  Idempotent and cheap
        once done.

        Args:
            wrt: params (besides the prediction) that backward will differentiate,
                e.g. a learned ``gamma``.
        """
        unknown = [n for n in wrt if n not in self.params]
        if unknown:
            raise ValueError(
                f"loss {self.name!r}: prepare(wrt=...) takes param names "
                f"{sorted(self.params)}; got {unknown}"
            )
        _backend(self, torch=True)
        pred = self.inputs[0]
        moving = tuple(n for n in (*self.inputs, *self.params) if n == pred or n in wrt)
        if self.classes:
            # (also what the traced forward/backward ask of the loss: whether index
            # targets are gathered; a kernel read from the disk cache did not compute it)
            self._index_gathers()
            # the general kernels, and those specialised to the params whose default is
            # the number 0 (a call that leaves them alone uses those; see _class_kernel)
            zero = frozenset(
                n
                for n, v in self.params.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
            )
            for mode in ("prob", "index"):
                for w in ((), (pred,), moving):
                    for zeros in {frozenset(), zero}:
                        self._class_kernel("torch", mode, w, True, zeros)
        else:
            # the forward kernels (value only; value and d/dpred, fused) and backward's
            # recompute kernels (evaluate-only without a graph, differentiable with one)
            from customloss import fast as fast_path

            nargs = len(self.inputs) + len(self.params)
            for forward in (
                self._kernel("torch", (), fast=True),
                self._kernel("torch", (pred,), value=True, fast=True),
            ):
                fast_path._eager_for(forward, nargs, "sum")  # the reduced forward
            for fast_ in (True, False):
                self._kernel("torch", moving, value=True, fast=fast_)
        return self

    def with_defaults(self, **params: Any) -> Loss:
        """A new ``Loss`` with other param defaults (and call options such as
        ``ignore_index`` for class-axis losses, or a variant such as ``base`` of
        ``class_balanced``); this one is unchanged."""
        for k in [k for k in params if k in self.variants]:
            return self.variants[k](params.pop(k)).with_defaults(**params)
        options = {k: params.pop(k) for k in list(params) if k in self.options}
        _validate.check_param_names(
            self.name, params, [*self.params, *self.options, *self.variants]
        )
        new = object.__new__(Loss)
        new.__dict__.update(self.__dict__)
        defaults = {k: _normalise_default(k, v) for k, v in params.items()}
        _validate.check_param_domains(self.name, self.domains, defaults, tensors=True)
        new.params = {**self.params, **defaults}
        new.options = {**self.options, **options}
        return new

    # -- serialization ---------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """A plain dict (name, DSL text, inputs, params, version, sha256) that
        ``cl.get(config)`` rebuilds exactly; see :mod:`customloss.serialize`."""
        from customloss import serialize

        return serialize.to_config(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the mathematics, never from the defining function, so a pickle
        # loads in a process that never ran the defining code.
        state = {
            "name": self.name,
            "expr": self.expr,
            "inputs": self.inputs,
            "params": self.params,
            "classes": self.classes,
            "doc": self.doc,
            "references": self.references,
            "source_text": self._source_text,
            "index_mean_weight": self.index_mean_weight,
            "per_class": self.per_class,
            "options": self.options,
            "variants": self.variants,
            "domains": self.domains,
        }
        return (_rebuild, (state,))

    # -- presentation ---------------------------------------------------------
    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"Loss({self.name!r}, {self.expr}{', ' + ps if ps else ''})"

    def _repr_latex_(self) -> str:
        args = ", ".join(self.inputs)
        return f"$\\displaystyle \\ell_{{\\mathrm{{{self.name}}}}}({args}) = {self.latex()}$"

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.name}**" + (f": {self.doc.splitlines()[0]}" if self.doc else ""), ""]
        lines.append(f"$$\\ell({', '.join(self.inputs)}) = {self.latex()}$$")
        lines.append("")
        lines.append(
            f"$$\\frac{{\\partial \\ell}}{{\\partial {self.inputs[0]}}} = {self.grad_latex()}$$"
        )
        if self.params:
            lines += ["", "| param | default |", "|---|---|"]
            lines += [
                f"| `{k}` | {v if v is not None else 'required'} |" for k, v in self.params.items()
            ]
        return "\n".join(lines)

    def plot(self, **kwargs: Any) -> Any:
        """Loss and gradient curves as a matplotlib figure (see ``customloss.plot.plot_loss``)."""
        from customloss.plot import plot_loss

        return plot_loss(self, **kwargs)

    def pretty(self) -> str:
        """The loss and its gradient, pretty-printed in Unicode."""
        return (
            f"{self.name}({', '.join(self.inputs)}"
            + (f"; {', '.join(self.params)}" if self.params else "")
            + ") =\n"
            + sympy.pretty(self.expr, use_unicode=True)
            + f"\n\nd{self.name}/d{self.inputs[0]} =\n"
            + sympy.pretty(self.grad(), use_unicode=True)
        )


def _stored_expr(key: tuple, compute: Callable[[], sympy.Expr]) -> sympy.Expr:
    """The expression for ``key`` from the disk cache, else computed (and stored there)."""
    stored = diskcache.load("expr", key)
    if isinstance(stored, sympy.Expr):
        return stored
    expr = compute()
    diskcache.store("expr", key, expr)
    return expr


def _stored_kernel(
    key: tuple, backend: str, generate: Callable[[], codegen.Kernel]
) -> codegen.Kernel:
    """The kernel for ``key`` from the disk cache, else generated (and stored there)."""
    global kernel_builds
    stored = diskcache.load("kernel", key)
    if stored is not None:
        try:
            kernel = codegen.kernel_from_source(
                stored["ident"], stored["source"], stored["ident"], stored["outputs"],
                _runtime(backend),
            )  # fmt: skip
        except Exception:  # a damaged entry: generate afresh (and overwrite it)
            stored = None
    if stored is None:
        kernel = generate()
        diskcache.store(
            "kernel",
            key,
            {"source": kernel.source, "ident": kernel.fn.__name__, "outputs": list(kernel.outputs)},
        )
    kernel_builds += 1
    return kernel


def _rebuild(state: dict[str, Any]) -> Loss:
    """Unpickle a :class:`Loss` from its mathematics."""
    per_class = state["per_class"]
    implicit = {k for k, v in state["params"].items() if v is None or isinstance(v, tuple)}
    new = Loss(
        state["name"],
        state["expr"],
        inputs=state["inputs"],
        params=state["params"],
        classes=state["classes"],
        doc=state["doc"] or None,
        references=state["references"],
        source_text=state["source_text"],
        index_mean_weight=state["index_mean_weight"],
        class_params=[k for k in per_class if k in state["params"] and k not in implicit],
    )
    new.options = dict(state["options"])
    new.variants = dict(state.get("variants", {}))
    new.domains = dict(state.get("domains", {}))
    return new


_BACKENDS: dict[tuple[bool, bool], Any] = {}


def _backend(loss: Loss, *, torch: bool) -> Any:
    """The module that evaluates ``loss``: elementwise or class-axis, NumPy or Torch."""
    # (a dict hit, not importlib, on every call: torch.compile traces a user's model
    # through here, and Dynamo does not trace importlib.import_module)
    key = (torch, loss.classes)
    module = _BACKENDS.get(key)
    if module is None:
        import importlib

        kind = "torch" if torch else "numpy"
        suffix = "classes" if loss.classes else "backend"
        module = _BACKENDS[key] = importlib.import_module(f"customloss.{kind}_{suffix}")
    return module


def _runtime(backend: str) -> Any:
    if backend == "numpy":
        from customloss.numpy_backend import RUNTIME

        return RUNTIME
    if backend == "torch":
        from customloss.torch_backend import RUNTIME

        return RUNTIME
    raise ValueError(f"unknown backend {backend!r}")


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def loss(
    name: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    classes: bool = False,
    doc: str | None = None,
    references: Sequence[str] = (),
    class_params: Sequence[str] = (),
    index_mean_weight: Callable[..., Any] | str | None = None,
    domains: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Loss]:
    """Decorator: build a :class:`Loss` from a function returning a SymPy expression.

    The function's arguments become SymPy symbols named after them: the first is the
    prediction, the second the target, the rest must be params (keys of ``params``).

    Args:
        name: loss name; default the function's name.
        params: param name -> default value (``None``: required at call time).
        classes: the inputs carry a class axis.
        doc: documentation; default the function's docstring.
        references: literature references.
        class_params: params with scalar defaults that are nevertheless per-class
            (a scalar default then applies to every class).
        index_mean_weight: with class-index targets, ``"mean"`` divides by the sum of
            this per-sample expression instead of the count (torch's weighted mean of
            ``cross_entropy``): a function of the same arguments, or a string.
        domains: input or param name -> value domain: ``"probability"`` ([0, 1]),
            ``"binary"``, ``"sign"``, ``"nonnegative"``, ``"positive"`` or an interval
            such as ``"[0, 1)"``. Inputs are checked with ``validate=True``; params
            whenever a value is given (defaults included).

    Returns:
        A decorator turning the function into a ``Loss`` (it is not registered).
    """
    if callable(name):
        raise TypeError("use @cl.loss() or @cl.loss(params=...), with parentheses")

    def decorate(fn: Callable[..., Any]) -> Loss:
        sig = inspect.signature(fn)
        argnames = []
        for p in sig.parameters.values():
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise TypeError(
                    f"loss function {fn.__name__!r}: argument {p.name!r} must be positional"
                )
            argnames.append(p.name)
        if len(argnames) < 2:
            raise TypeError(
                f"loss function {fn.__name__!r} needs at least two arguments (prediction, target)"
            )
        inputs, rest = argnames[:2], argnames[2:]
        declared = dict(params or {})
        for a in rest:
            if a not in declared:
                raise TypeError(
                    f"loss function {fn.__name__!r}: argument {a!r} is neither an input "
                    "nor a declared param (add it to params=)"
                )
        extra = [k for k in declared if k not in rest]
        if extra:
            raise TypeError(
                f"loss function {fn.__name__!r}: param {extra[0]!r} is not an argument of the function"
            )
        syms = [dsl.symbol(a) for a in argnames]
        expr = fn(*syms)
        if isinstance(expr, (int, float)) and not isinstance(expr, bool):
            expr = sympy.Float(expr)
        if not isinstance(expr, sympy.Expr):
            raise TypeError(
                f"loss function {fn.__name__!r} must return a SymPy expression, "
                f"got {type(expr).__name__}"
            )
        return Loss(
            name or fn.__name__,
            expr,
            inputs=inputs,
            params={k: declared[k] for k in rest},
            classes=classes,
            doc=doc if doc is not None else fn.__doc__,
            references=references,
            class_params=class_params,
            index_mean_weight=(
                index_mean_weight(*syms) if callable(index_mean_weight) else index_mean_weight
            ),
            domains=domains,
        )

    return decorate


def define(
    name: str,
    source: str,
    *,
    inputs: Sequence[str],
    params: Mapping[str, Any] | None = None,
    classes: bool = False,
    doc: str | None = None,
    references: Sequence[str] = (),
    class_params: Sequence[str] = (),
    index_mean_weight: str | None = None,
    domains: Mapping[str, str] | None = None,
) -> Loss:
    """Build a :class:`Loss` from a string, safely (the text is never executed).

    Args:
        name: loss name.
        source: the elementwise loss, e.g. ``"(p - y)**2 * (1 + k*y)"``.
        inputs: the input names, prediction first.
        params: param name -> default (``None``: required at call time).
        classes: the inputs carry a class axis.
        doc: documentation.
        references: literature references.
        class_params, index_mean_weight: as for :func:`loss`.
        domains: input or param name -> value domain: ``"probability"`` ([0, 1]),
            ``"binary"``, ``"sign"``, ``"nonnegative"``, ``"positive"`` or an interval
            such as ``"[0, 1)"``. Inputs are checked with ``validate=True``; params
            whenever a value is given (defaults included).

    Raises:
        ValueError: the text is not a valid loss (names the construct or symbol), or
            a default lies outside its param's domain.
    """
    inputs = _input_names(name, inputs)
    params = dict(params or {})
    expr, weight = _parsed(source, (*inputs, *params), index_mean_weight)
    return Loss(
        name,
        expr,
        inputs=inputs,
        params=params,
        classes=classes,
        doc=doc,
        references=references,
        source_text=source,
        class_params=class_params,
        index_mean_weight=weight,
        domains=domains,
    )


def _parsed(
    source: str, names: tuple[str, ...], index_mean_weight: str | None
) -> tuple[sympy.Expr, sympy.Expr | None]:
    """The parsed loss text (and ``index_mean_weight`` text), from the disk cache if there.

    The parse is a function of the text and the names alone (and of ``parse.py``, whose
    source is part of every key), so a text parsed once (and accepted by the parser's
    limits) is read back instead of parsed again.
    """
    key = ("define", source, names, index_mean_weight)
    stored = diskcache.load("expr", key)
    if (
        isinstance(stored, tuple)
        and len(stored) == 2
        and isinstance(stored[0], sympy.Expr)
        and (stored[1] is None or isinstance(stored[1], sympy.Expr))
    ):
        return stored
    from customloss import parse

    expr = parse.parse_expression(source, symbols=list(names))
    weight = (
        None
        if index_mean_weight is None
        else parse.parse_expression(index_mean_weight, symbols=list(names))
    )
    diskcache.store("expr", key, (expr, weight))
    return expr, weight
