"""Losses as plain data: DSL text, config dicts and TOML loss files.

A loss defined by an expression can always be rebuilt from its text: the
:class:`DSLPrinter` writes a SymPy expression back in the DSL that
:mod:`customloss.parse` reads (never evaluating it), so ``Loss.to_config()`` is a plain
dict of strings, numbers and lists that round-trips exactly through
:func:`from_config`, JSON, YAML or TOML.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sympy
from sympy.printing.str import StrPrinter

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = ["DSLPrinter", "expression_hash", "from_config", "load", "to_config", "to_dsl"]

CONFIG_KEYS = (
    "name",
    "expr",
    "inputs",
    "params",
    "classes",
    "class_params",
    "index_mean_weight",
    "doc",
    "references",
    "customloss_version",
    "sha256",
    "domains",
    "options",
)
_FUNCS = {
    "exp": "exp",
    "log": "log",
    "tanh": "tanh",
    "cosh": "cosh",
    "Abs": "abs",
    "csum": "csum",
    "cmax": "cmax",
}


class DSLPrinter(StrPrinter):
    """Prints plain SymPy loss expressions in the customloss DSL."""

    def __init__(self) -> None:
        super().__init__({"order": "none"})

    def _print_Float(self, expr: sympy.Float) -> str:
        return repr(float(expr))

    def _print_Function(self, expr: sympy.Function) -> str:
        from customloss.calculus import CMax, CSum

        if isinstance(expr, CSum):
            name = "csum"
        elif isinstance(expr, CMax):
            name = "cmax"
        else:
            name = _FUNCS.get(type(expr).__name__)
        if name is None:
            raise ValueError(
                f"the function {type(expr).__name__!r} has no DSL spelling; "
                "this loss cannot be written as text"
            )
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_Abs = _print_Function

    def _print_Max(self, expr: sympy.Max) -> str:
        return f"maximum({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: sympy.Min) -> str:
        return f"minimum({', '.join(self._print(a) for a in expr.args)})"

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        pieces = list(expr.args)
        if pieces[-1][1] != sympy.true:
            raise ValueError("a Piecewise without an 'otherwise' branch has no DSL spelling")
        out = self._print(pieces[-1][0])
        for val, cond in reversed(pieces[:-1]):
            out = f"where({self._print(cond)}, {self._print(val)}, {out})"
        return out

    def _print_Relational(self, expr: Any) -> str:
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr: sympy.And) -> str:
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sympy.Or) -> str:
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sympy.Not) -> str:
        return f"(not {self._print(expr.args[0])})"

    def _print_Exp1(self, expr: Any) -> str:
        return "exp(1)"  # not "E": a param may be called E

    def _print_Pi(self, expr: Any) -> str:
        return "pi"


def to_dsl(expr: sympy.Expr) -> str:
    """The DSL text of ``expr`` (raises ``ValueError`` if it has no DSL spelling)."""
    return DSLPrinter().doprint(expr)


def expression_hash(expr: sympy.Expr) -> str:
    """SHA-256 of the canonical form (``srepr``) of an expression."""
    return hashlib.sha256(sympy.srepr(expr).encode()).hexdigest()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_config(loss: Loss) -> dict[str, Any]:
    """A plain dict that rebuilds ``loss`` with :func:`from_config` (see ``Loss.to_config``)."""
    from customloss import __version__, parse

    names = [*loss.inputs, *loss.params]
    if "pi" in names and loss.expr.has(sympy.pi):
        raise ValueError(
            f"loss {loss.name!r} uses the constant pi and a symbol named 'pi'; its text "
            "would read both as the symbol (rename the symbol)"
        )
    text = to_dsl(loss.expr)
    canonical = parse.parse_expression(text, symbols=names)
    cfg: dict[str, Any] = {
        "name": loss.name,
        "expr": text,
        "inputs": list(loss.inputs),
        "params": {k: _plain(v) for k, v in loss.params.items()},
        "classes": loss.classes,
        "doc": loss.doc,
        "references": list(loss.references),
        "customloss_version": __version__,
        "sha256": expression_hash(canonical),
    }
    if loss.domains:
        cfg["domains"] = dict(loss.domains)
    if loss.classes:
        implicit = [k for k, v in loss.params.items() if v is None or isinstance(v, tuple)]
        cfg["class_params"] = [k for k in loss.per_class if k in loss.params and k not in implicit]
        if loss.index_mean_weight is not None:
            cfg["index_mean_weight"] = to_dsl(loss.index_mean_weight)
        # call options (ignore_index, class_dim); None (the default class_dim) is left
        # out: TOML has no null
        options = {k: v for k, v in loss.options.items() if v is not None}
        if options:
            cfg["options"] = options
    return cfg


#: config key -> (accepted types, what to say, the type of list items if a list)
_KEY_TYPES: dict[str, tuple[tuple[type, ...], str, type | None]] = {
    "name": ((str,), "a string", None),
    "expr": ((str,), "a string (DSL text)", None),
    "inputs": ((list, tuple), "a list of two names", str),
    "params": ((Mapping,), "a table/dict of name -> default", None),
    "classes": ((bool,), "true or false", None),
    "class_params": ((list, tuple), "a list of param names", str),
    "index_mean_weight": ((str,), "a string (DSL text)", None),
    "doc": ((str,), "a string", None),
    "references": ((list, tuple, str), "a list of strings", str),
    "customloss_version": ((str,), "a string", None),
    "sha256": ((str,), "a string", None),
    "domains": ((Mapping,), "a table/dict of input -> domain", None),
    "options": ((Mapping,), "a table/dict of option -> value", None),
}


def _check_types(config: Mapping[str, Any]) -> None:
    """Refuse a config value of the wrong type, naming the key (``classes = "false"``
    would otherwise be true, ``doc = 5`` an AttributeError deep inside)."""
    for key, value in config.items():
        types, what, item = _KEY_TYPES[key]
        if value is None and key not in ("name", "expr", "inputs"):
            continue  # an optional key written as null
        ok = isinstance(value, types)
        if ok and item is not None and not isinstance(value, str):
            ok = all(isinstance(v, item) for v in value)
        if not ok:
            raise ValueError(
                f"loss config key {key!r} must be {what}, got {type(value).__name__} {value!r}"
            )


def from_config(config: Mapping[str, Any]) -> Loss:
    """Rebuild a loss from :func:`to_config` output (or a hand-written config).

    Only ``name``, ``expr`` and ``inputs`` are required. When ``sha256`` is present the
    parsed expression must match it.

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: unknown keys, missing keys, a value of the wrong type, a bad
            expression, or a hash mismatch.
    """
    from customloss import parse
    from customloss.loss import define

    if not isinstance(config, Mapping):
        raise TypeError(f"a loss config must be a dict, got {type(config).__name__}")
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(
            f"loss config has the unknown key {unknown[0]!r}; valid keys: " + ", ".join(CONFIG_KEYS)
        )
    for key in ("name", "expr", "inputs"):
        if key not in config:
            raise ValueError(f"loss config is missing the key {key!r}")
    _check_types(config)
    params = config.get("params") or {}
    loss = define(
        config["name"],
        config["expr"],
        inputs=tuple(config["inputs"]),
        params=dict(params),
        classes=bool(config.get("classes", False)),
        doc=config.get("doc") or None,
        references=config.get("references") or (),
        class_params=tuple(config.get("class_params") or ()),
        index_mean_weight=config.get("index_mean_weight"),
        domains=config.get("domains"),
    )
    options = config.get("options") or {}  # (a mapping: _check_types)
    bad = [k for k in options if k not in loss.options]
    if bad:
        valid = ", ".join(loss.options) or "none (only class-axis losses take options)"
        raise ValueError(f"loss config has the unknown option {bad[0]!r}; valid options: {valid}")
    if options:
        loss = loss.with_defaults(**options)
    digest = config.get("sha256")
    if digest is not None:
        names = [*loss.inputs, *loss.params]
        actual = expression_hash(parse.parse_expression(config["expr"], symbols=names))
        if actual != digest:
            raise ValueError(
                f"loss config {config['name']!r}: the expression does not match its sha256 "
                "(edited or corrupted)"
            )
    return loss


def load(path: str | Path) -> Loss:
    """Load a loss from a TOML file.

    Keys: ``name``, ``expr``, ``inputs`` (required), ``classes``, ``doc``,
    ``references``, ``class_params``, ``index_mean_weight``, ``customloss_version``,
    ``sha256`` and the tables ``[params]``, ``[domains]`` and ``[options]`` (the keys
    of :func:`to_config`; docs/getting-started.md, "Loss files").

    Raises:
        ValueError: the file cannot be read or parsed, or does not define a valid loss;
            the message names the file.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read loss file {str(p)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"loss file {str(p)!r} is not valid TOML: {exc}") from None
    try:
        return from_config(data)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"loss file {str(p)!r}: {exc}") from None
