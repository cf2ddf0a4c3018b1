"""The ``customloss`` command line: list, show, check, plot and bench losses.

::

    customloss list '*focal*'
    customloss show focal --param gamma=1 --latex
    customloss check focal                      # exit status 1 if a problem is found
    customloss plot focal --param gamma=0,0.5,1,2,5 --x p_t --out focal.png
    customloss bench focal mse --n 1000000

A loss is named by its registered name or by the path of a TOML loss file (``name``,
``expr``, ``inputs``, ``classes``, ``[params]``, ``[domains]``, ``doc``, ``references``,
...: docs/getting-started.md, "Loss files").

``--param NAME=VALUE`` sets a param; ``VALUE`` is a number, ``[a,b,...]`` a per-class
vector, and (for ``plot``) a comma-separated list of values draws one curve each:
``--param gamma=0,0.5,1,2,5``, ``--param counts=[1000,10]``.

Mistakes (an unknown loss or param, bad ``--param`` syntax, an unreadable file) print one
line, ``customloss: error: ...``, and exit with status 2; ``check`` exits with status 1
when it finds a problem.  ``CUSTOMLOSS_DEBUG=1`` shows the traceback instead.

Needs the ``cli`` extra (click, rich); ``plot`` needs matplotlib, ``bench`` and the
NumPy == Torch part of ``check`` need torch.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import numpy as np

from customloss.registry import PluginLoadError

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = [
    "CheckResult",
    "CliError",
    "cli",
    "finite_difference_check",
    "load_loss",
    "main",
    "numpy_torch_check",
    "parse_param",
]

DEBUG_ENV = "CUSTOMLOSS_DEBUG"
ParamValue = float | tuple[float, ...]


class CliError(click.ClickException):
    """A user mistake: printed as one line, exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"customloss: error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise CliError(message)


@contextmanager
def _user_errors(what: str = "") -> Iterator[None]:
    """Turn the library's errors about user input into one-line :class:`CliError`."""
    try:
        yield
    except CliError:
        raise
    except (ValueError, TypeError, KeyError, OSError, NotImplementedError, PluginLoadError) as exc:
        # (PluginLoadError: a broken plugin under CUSTOMLOSS_STRICT_PLUGINS=1)
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        message = (
            str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
        )
        if isinstance(exc, OSError) and exc.filename is not None:
            message = f"{exc.strerror or exc}: {exc.filename}"
        _fail(f"{what}{message}" if what else message)


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------
def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        _fail(f"{where}: {text.strip()!r} is not a number")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_param(text: str) -> tuple[str, list[ParamValue]]:
    """Parse ``NAME=VALUE[,VALUE...]`` as given to ``--param``.

    A value is a number or a bracketed vector ``[a,b,...]`` (per-class params).

    Args:
        text: the option's argument, e.g. ``"gamma=0,0.5,1"`` or ``"counts=[1000,10]"``.

    Returns:
        The name and the list of values.

    Raises:
        CliError: the text is not of that form (the message quotes it).
    """
    where = f"--param {text!r}"
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        _fail(f"{where}: expected NAME=VALUE, e.g. gamma=2 or gamma=0,0.5,1")
    if rest.count("[") != rest.count("]"):
        _fail(f"{where}: unbalanced brackets")
    values: list[ParamValue] = []
    for part in _split_top(rest):
        part = part.strip()
        if not part:
            _fail(f"{where}: empty value")
        if part.startswith("["):
            if not part.endswith("]") or part.count("[") != 1:
                _fail(f"{where}: a vector is written [a,b,...]")
            items = [s for s in part[1:-1].split(",")]
            if not any(s.strip() for s in items):
                _fail(f"{where}: empty vector")
            values.append(tuple(_number(s, where) for s in items))
        else:
            values.append(_number(part, where))
    return name, values


def _params(
    loss: Loss, options: Sequence[str], *, sweep: bool = False
) -> tuple[dict[str, ParamValue], str | None, list[ParamValue]]:
    """Fixed param values, and the swept param with its values (``sweep``)."""
    fixed: dict[str, ParamValue] = {}
    swept: str | None = None
    swept_values: list[ParamValue] = []
    for text in options:
        name, values = parse_param(text)
        if name not in loss.params:
            valid = ", ".join(loss.params) or "none"
            _fail(f"loss {loss.name!r} has no param {name!r}; valid params: {valid}")
        if name in fixed or name == swept:
            _fail(f"--param {name} is given twice")
        if len(values) > 1:
            if not sweep:
                _fail(f"--param {text!r}: give one value (several values are for `plot`)")
            if swept is not None:
                _fail(f"only one --param may list several values (got {swept} and {name})")
            swept, swept_values = name, values
        else:
            fixed[name] = values[0]
    return fixed, swept, swept_values


def load_loss(spec: str) -> Loss:
    """The loss a command names: a registered name or the path of a TOML file.

    Args:
        spec: ``"focal"`` or ``"losses/my_focal.toml"``.

    Returns:
        The :class:`~customloss.loss.Loss`.

    Raises:
        CliError: unknown name (with suggestions), unreadable or invalid file.
    """
    import customloss

    path = Path(spec)
    if _is_file_spec(spec):
        if not path.is_file():
            _fail(f"no such loss file: {spec}")
        with _user_errors():
            return customloss.load(path)
    with _user_errors():
        return customloss.get(spec)


def _is_file_spec(spec: str) -> bool:
    """A ``.toml`` name or a path; else a registered name wins over a file of that name
    in the current directory (a folder ``focal/`` must not hide the loss ``focal``)."""
    import customloss

    if spec.endswith(".toml") or os.sep in spec or (os.altsep and os.altsep in spec):
        return True
    return spec not in customloss.names() and Path(spec).is_file()


def _provider(loss: Loss, spec: str) -> str:
    import customloss

    if _is_file_spec(spec):
        return f"file {spec}"
    info = customloss.info(loss.name)
    if info.plugin is None:
        return f"customloss.register() in {info.module}" if info.module else "in-process"
    text = f"plugin {info.plugin}"
    if info.distribution:
        version = f" {info.version}" if info.version else ""
        text += f" ({info.distribution}{version})"
    return text


def _fmt_value(v: Any) -> str:
    if v is None:
        return "required"
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return f"{v:g}"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else 120
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


# ---------------------------------------------------------------------------
# the command group
# ---------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="customloss", message="customloss %(version)s")
def cli() -> None:
    """Design, inspect, check, plot and benchmark loss functions."""


@cli.command("list")
@click.argument("pattern", required=False)
def list_cmd(pattern: str | None) -> None:
    """List the registered losses (optionally those matching an fnmatch PATTERN)."""
    import customloss

    with _user_errors():  # a plugin that fails to load is a warning on stderr
        names = customloss.names(pattern)
    if not names:
        _fail(
            f"no loss matches {pattern!r} ({len(customloss.names())} registered; "
            "`customloss list` shows all)"
        )
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "inputs", "params", "provider", "description"):
        table.add_column(
            column,
            overflow="fold",
            no_wrap=column in ("name", "inputs", "provider"),
            max_width=28 if column == "params" else None,
            ratio=1 if column == "description" else None,
        )
    for name in names:
        info = customloss.info(name)
        loss = customloss.get(name)
        inputs = ", ".join(info.inputs) + (" [classes]" if loss.classes else "")
        params = ", ".join(f"{k}={_fmt_value(v)}" for k, v in info.params.items())
        provider = info.plugin or "register()"
        if info.distribution and info.distribution != provider:
            provider += f" ({info.distribution})"
        table.add_row(*(Text(s) for s in (name, inputs, params, provider, info.summary)))
    console = _console()
    console.print(table)
    console.print(Text(f"{len(names)} loss{'es' if len(names) != 1 else ''}", style="dim"))


def _param_option(
    help: str, metavar: str = "NAME=VALUE"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The repeatable ``--param/-p NAME=VALUE`` option (collected as ``param_options``)."""
    return click.option("--param", "-p", "param_options", multiple=True, metavar=metavar, help=help)


@cli.command()
@click.argument("loss_spec", metavar="NAME|FILE")
@_param_option("Set a param (substituted into the formulas).")
@click.option("--wrt", metavar="SYMBOL", help="Differentiate with respect to this input or param.")
@click.option("--latex", is_flag=True, help="Print LaTeX instead of pretty-printed formulas.")
@click.option(
    "--source",
    "backend",
    type=click.Choice(["torch", "numpy"]),
    help="Also print the generated code for this backend.",
)
def show(
    loss_spec: str,
    param_options: tuple[str, ...],
    wrt: str | None,
    latex: bool,
    backend: str | None,
) -> None:
    """Show a loss: formula, params, derived gradient and references."""
    import sympy

    loss = load_loss(loss_spec)
    fixed, _, _ = _params(loss, param_options)
    with _user_errors():
        loss = loss.with_defaults(**fixed)
        symbol = loss._symbol(wrt)
        grad = loss.grad(symbol.name)
    subs = {
        loss.symbols[k]: sympy.Integer(int(v)) if v.is_integer() else sympy.Float(v)
        for k, v in fixed.items()
        if isinstance(v, float) and math.isfinite(v)
    }
    expr = loss.expr.subs(subs) if subs else loss.expr
    grad = grad.subs(subs) if subs else grad
    width = shutil.get_terminal_size((100, 24)).columns
    if latex:
        expr_text, grad_text = sympy.latex(expr), sympy.latex(grad)
    else:
        expr_text = sympy.pretty(expr, use_unicode=True, num_columns=width)
        grad_text = sympy.pretty(grad, use_unicode=True, num_columns=width)
    role = {loss.inputs[0]: "prediction", loss.inputs[1]: "target"}
    lines = [loss.name + (f": {loss.doc.splitlines()[0]}" if loss.doc else "")]
    lines.append(f"provider: {_provider(loss, loss_spec)}")
    lines.append(
        "inputs: "
        + ", ".join(f"{n} ({role[n]})" for n in loss.inputs)
        + ("; class axis (classes=True)" if loss.classes else "")
    )
    if loss.params:
        lines.append(
            "params: " + ", ".join(f"{k} = {_fmt_value(v)}" for k, v in loss.params.items())
        )
    lines += ["", "loss:", expr_text, "", f"d {loss.name} / d {symbol.name}:", grad_text]
    body = "\n".join(loss.doc.splitlines()[1:]).strip()
    if body:
        lines += ["", body]
    if loss.references:
        lines += ["", "references:"] + [f"  - {r}" for r in loss.references]
    if backend:
        with _user_errors():
            lines += ["", f"generated {backend} code:", loss.source(backend)]
    click.echo("\n".join(lines))


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------
@dataclass
class CheckResult:
    """One line of ``customloss check``.

    Attributes:
        name: what was checked (``"d/dx vs finite differences"``).
        ok: True (passed), False (failed) or None (not applicable / skipped).
        detail: numbers or the reason.
    """

    name: str
    ok: bool | None
    detail: str
    problems: list[str] = field(default_factory=list)


def _sample(loss: Loss, n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float64 inputs in the usual domain of the loss's prediction."""
    from customloss.plot import input_kind

    rng = np.random.default_rng(seed)
    kind = input_kind(loss)
    if loss.classes:
        z = rng.normal(0.0, 2.0, (n, classes))
        y = np.exp(rng.normal(0.0, 1.0, (n, classes)))
        y /= y.sum(axis=1, keepdims=True)
        if kind == "probability":
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
        return z, y
    if kind == "logit":
        return rng.normal(0.0, 2.5, n), rng.uniform(0.0, 1.0, n)
    if kind == "probability":
        return rng.uniform(0.05, 0.95, n), rng.uniform(0.0, 1.0, n)
    return rng.normal(0.0, 1.5, n), rng.normal(0.0, 1.5, n)


def _call_params(values: dict[str, ParamValue]) -> dict[str, Any]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    return np.abs(a - b) <= atol + rtol * np.maximum(np.abs(a), np.abs(b))


def finite_difference_check(
    loss: Loss,
    params: dict[str, ParamValue],
    *,
    n: int = 64,
    classes: int = 3,
    seed: int = 0,
    rtol: float = 1e-5,
) -> list[CheckResult]:
    """The symbolic gradients against central finite differences, in float64.

    Checked: the prediction (every class entry for class-axis losses), the target
    (elementwise losses) and every scalar param, at ``n`` random points in the usual
    domain (:func:`customloss.plot.input_kind`).  Points where the value or a gradient
    is not finite are out of the domain and left out.  A point fails only if it fails
    with the step ``h`` and with ``h / 10`` (so a kink between ``x +- h`` is no failure).

    Args:
        loss: the loss.
        params: param values (all required ones included).
        n: number of random points.
        classes: classes per sample for class-axis losses.
        seed: random seed.
        rtol: tolerance relative to the largest gradient of the comparison.

    Returns:
        One :class:`CheckResult` per derivative.
    """
    x, y = _sample(loss, n, classes, seed)
    values = {k: (v if v is not None else None) for k, v in loss.params.items()}
    values.update(params)
    call = _call_params({k: v for k, v in values.items() if v is not None})
    results = []

    def value(xx: np.ndarray, yy: np.ndarray, **over: Any) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(loss(xx, yy, reduction="none", **{**call, **over}), np.float64)

    base = value(x, y)
    wrts: list[tuple[str, str]] = [(loss.inputs[0], "input")]
    if not loss.classes:
        wrts.append((loss.inputs[1], "target"))
    wrts += [(k, "param") for k, v in values.items() if isinstance(v, float)]
    for name, role in wrts:
        label = f"d/d{name} vs finite differences"
        with np.errstate(all="ignore"):
            if role == "param":
                analytic = np.asarray(
                    [
                        np.asarray(
                            loss.gradient(
                                x[i : i + 1], y[i : i + 1], wrt=name, reduction="sum", **call
                            ),
                            np.float64,
                        ).sum()
                        for i in range(x.shape[0])
                    ]
                )
            else:
                analytic = np.asarray(
                    loss.gradient(x, y, wrt=name, reduction="none", **call), np.float64
                )
        columns = range(x.shape[1]) if (loss.classes and role == "input") else [None]
        ok_points = 0
        failures: list[str] = []
        for col in columns:
            an = analytic if col is None else analytic[:, col]
            fds = []
            for scale in (1.0, 0.1):
                fds.append(_fd(value, x, y, call, name, role, col, scale, loss.domains.get(name)))
            finite = np.isfinite(base) & np.isfinite(an) & np.isfinite(fds[0]) & np.isfinite(fds[1])
            scale = max(1.0, float(np.max(np.abs(an[finite]), initial=0.0)))
            good = _close(an, fds[0], rtol, 1e-7 * scale) | _close(an, fds[1], rtol, 1e-7 * scale)
            ok_points += int(np.count_nonzero(finite))
            for i in np.flatnonzero(finite & ~good)[:3]:
                at = f"[{i}, {col}]" if col is not None else f"[{i}]"
                failures.append(
                    f"{name}{at}: symbolic {an[i]:.9g}, finite differences {fds[1][i]:.9g} "
                    f"(input {np.ravel(x[i])[0 if col is None else col]:.6g}, target "
                    f"{np.ravel(y[i])[0 if col is None else col]:.6g})"
                )
        if ok_points == 0:
            results.append(CheckResult(label, None, "no point in the domain"))
        elif failures:
            results.append(CheckResult(label, False, failures[0], failures))
        else:
            results.append(CheckResult(label, True, f"{ok_points} points agree (rtol {rtol:g})"))
    return results


def _fd(
    value: Callable[..., np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    call: dict[str, Any],
    name: str,
    role: str,
    col: int | None,
    scale: float,
    domain: str | None = None,
) -> np.ndarray:
    """Central difference of the elementwise loss (per sample) along one variable
    (one-sided, from inside, at the edge of a param's ``domain``)."""
    if role == "param":
        from customloss import _validate

        v = float(call[name])
        h = 1e-6 * scale * max(1.0, abs(v))
        inside = [domain is None or _validate.in_domain(v + k * h, domain) for k in (-1, 1)]
        if all(inside):
            hi = value(x, y, **{name: np.float64(v + h)})
            lo = value(x, y, **{name: np.float64(v - h)})
            return (hi - lo) / (2 * h)
        # at the edge of the param's domain (label_smoothing = 0): a one-sided
        # second-order difference from inside, -3 f(v) + 4 f(v + s h) - f(v + 2 s h)
        s = 1.0 if inside[1] else -1.0
        f = [value(x, y, **{name: np.float64(v + k * s * h)}) for k in (0, 1, 2)]
        return s * (-3 * f[0] + 4 * f[1] - f[2]) / (2 * h)
    arr = x if role == "input" else y
    h = 1e-6 * scale * np.maximum(1.0, np.abs(arr if col is None else arr[:, col]))
    up, down = arr.copy(), arr.copy()
    if col is None:
        up, down = arr + h, arr - h
    else:
        up[:, col] += h
        down[:, col] -= h
    if role == "input":
        return (value(up, y) - value(down, y)) / (2 * h)
    return (value(x, up) - value(x, down)) / (2 * h)


def numpy_torch_check(
    loss: Loss, params: dict[str, ParamValue], *, n: int = 64, classes: int = 3, seed: int = 1
) -> list[CheckResult]:
    """NumPy and Torch backends agree in float64: values and every gradient.

    Returns:
        One :class:`CheckResult` for the values and one per derivative; a single
        skipped result when torch is not installed.
    """
    try:
        import torch
    except ImportError:
        return [CheckResult("NumPy == Torch", None, "torch is not installed")]
    x, y = _sample(loss, n, classes, seed)
    values = dict(loss.params)
    values.update(params)
    call = _call_params({k: v for k, v in values.items() if v is not None})
    scalars = [k for k, v in values.items() if isinstance(v, float)]
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y, requires_grad=not loss.classes)
    pt = {k: torch.tensor(v, requires_grad=k in scalars) for k, v in call.items()}
    with np.errstate(all="ignore"):
        np_value = np.asarray(loss(x, y, reduction="none", **call), np.float64)
    t_value = loss(xt, yt, reduction="none", **pt)
    t_value.sum().backward()
    pairs = [("value", np_value, t_value.detach().numpy())]
    wrt = [(loss.inputs[0], xt)] + ([(loss.inputs[1], yt)] if not loss.classes else [])
    wrt += [(k, pt[k]) for k in scalars]
    for name, tensor in wrt:
        with np.errstate(all="ignore"):
            g = np.asarray(loss.gradient(x, y, wrt=name, reduction="sum", **call), np.float64)
        tg = tensor.grad
        pairs.append((f"d/d{name}", g, None if tg is None else tg.numpy()))
    results = []
    for label, a, b in pairs:
        name = f"NumPy == Torch: {label}"
        if b is None:
            results.append(CheckResult(name, False, "torch gave no gradient"))
            continue
        a, b = np.broadcast_arrays(a, b)
        same_nonfinite = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
        good = same_nonfinite | _close(a, b, 1e-9, 1e-12)
        if good.all():
            diff = np.abs(a - b)[np.isfinite(a) & np.isfinite(b)]
            results.append(
                CheckResult(name, True, f"max |difference| {float(diff.max(initial=0.0)):.2g}")
            )
        else:
            i = int(np.flatnonzero(~good.ravel())[0])
            results.append(
                CheckResult(name, False, f"NumPy {a.ravel()[i]:.12g} != Torch {b.ravel()[i]:.12g}")
            )
    return results


_SCAN_LOGITS = (-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4)
_SCAN_PROBS = (0.0, 1e-30, 1e-6, 0.5, 1.0 - 1e-6, 1.0)


def fallback_scan(loss: Loss, params: dict[str, ParamValue], classes: int = 3) -> CheckResult:
    """A simple extreme-value scan for losses :func:`customloss.check.check` does not cover.

    Class-axis losses: the ground-truth entry and the others at extreme logits (or
    probabilities at and next to 0 and 1), one-hot and smoothed targets, float32 and
    float64, NumPy and (if installed) Torch.  Reported: any ``nan``, and any ``inf`` for
    a loss on logits (whose value and gradient are finite everywhere).
    """
    from customloss.plot import input_kind

    kind = input_kind(loss)
    grid = _SCAN_LOGITS if kind != "probability" else _SCAN_PROBS
    rows = []
    for a in grid:
        for b in grid:
            row = np.full(classes, b)
            row[0] = a
            rows.append(row)
    z = np.array(rows)
    if kind == "probability":  # rows that are distributions
        total = z.sum(axis=1, keepdims=True)
        z = z[total[:, 0] > 0] / total[total[:, 0] > 0]
    onehot = np.zeros_like(z)
    onehot[:, 0] = 1.0
    smooth = np.full_like(z, 0.1 / (classes - 1))
    smooth[:, 0] = 0.9
    if not loss.classes:
        z, onehot, smooth = z[:, :1], onehot[:, :1], smooth[:, :1]
    values = dict(loss.params)
    values.update(params)
    call = _call_params({k: v for k, v in values.items() if v is not None})
    problems: dict[str, None] = {}
    evaluated = 0
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    for dtype in ("float32", "float64"):
        for target_name, target in (("one-hot", onehot), ("smoothed", smooth)):
            zz, tt = z.astype(dtype), target.astype(dtype)
            outs = {}
            with np.errstate(all="ignore"):
                outs["numpy value"] = np.asarray(loss(zz, tt, reduction="none", **call))
                outs["numpy gradient"] = np.asarray(loss.gradient(zz, tt, reduction="none", **call))
            if torch is not None:
                xt = torch.tensor(zz, requires_grad=True)
                tp = {k: torch.tensor(v) for k, v in call.items()}
                v = loss(xt, torch.tensor(tt), reduction="none", **tp)
                v.sum().backward()
                outs["torch value"] = v.detach().numpy()
                outs["torch gradient"] = xt.grad.numpy()
            for what, out in outs.items():
                evaluated += out.size
                rows_out = out.reshape(out.shape[0], -1)
                bad = np.isnan(rows_out) | (np.isinf(rows_out) & (kind != "probability"))
                for i in np.flatnonzero(bad.any(axis=1)):
                    got = rows_out[i][bad[i]][0]
                    shown = np.array2string(zz[i], precision=3, separator=", ")
                    problems[f"{what} is {got} at input {shown}, {target_name} target"] = None
    found = list(problems)
    name = "extreme inputs (built-in scan)"
    if found:
        return CheckResult(name, False, f"{len(found)} problem(s): {found[0]}", found)
    rule = "nan" if kind == "probability" else "inf or nan"
    return CheckResult(name, True, f"no {rule} in {evaluated} results (float32, float64)")


def _extreme_scan(
    loss: Loss, params: dict[str, ParamValue], quick: bool
) -> tuple[CheckResult, Any]:
    """customloss.check.check when it covers the loss, else :func:`fallback_scan`."""
    try:
        from customloss.check import check as scan
    except ImportError:
        return fallback_scan(loss, params), None
    scanned = loss.with_defaults(**params) if params else loss
    kwargs: dict[str, Any] = {}
    if quick:
        kwargs = {"dtypes": ("float32", "float64"), "params": {k: () for k in scanned.params}}
    try:
        report = scan(scanned, **kwargs)
    except NotImplementedError:
        return fallback_scan(loss, params), None
    name = "extreme inputs (customloss.check)"
    if report.ok:
        return CheckResult(name, True, report.summary().split(": ", 1)[-1]), report
    return CheckResult(name, False, f"{len(report.problems)} problem(s)"), report


@cli.command()
@click.argument("loss_spec", metavar="NAME|FILE")
@_param_option("Set a param (required ones must be set).")
@click.option("--points", default=64, show_default=True, help="Random points per comparison.")
@click.option("--classes", default=3, show_default=True, help="Classes of class-axis losses.")
@click.option(
    "--quick", is_flag=True, help="Scan only the given param values, in float32 and float64."
)
@click.option("--no-scan", is_flag=True, help="Skip the extreme-value scan.")
def check(
    loss_spec: str,
    param_options: tuple[str, ...],
    points: int,
    classes: int,
    quick: bool,
    no_scan: bool,
) -> None:
    """Check gradients (finite differences), NumPy == Torch and extreme inputs.

    Exit status 1 if any check fails.
    """
    loss = load_loss(loss_spec)
    fixed, _, _ = _params(loss, param_options)
    missing = [k for k, v in loss.params.items() if v is None and k not in fixed]
    if missing:
        example = "[" + ",".join(["1"] * classes) + "]" if loss.classes else "1"
        _fail(f"loss {loss.name!r} needs --param {missing[0]}=... (e.g. {missing[0]}={example})")
    if points < 1 or classes < 2:
        _fail("--points must be >= 1 and --classes >= 2")
    results: list[CheckResult] = []
    report = None
    with _user_errors():
        results += finite_difference_check(loss, fixed, n=points, classes=classes)
        results += numpy_torch_check(loss, fixed, n=points, classes=classes)
        if not no_scan:
            scan_result, report = _extreme_scan(loss, fixed, quick)
            results.append(scan_result)
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False, title=f"check {loss.name}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for r in results:
        verdict = {
            True: Text("ok", "green"),
            False: Text("FAIL", "bold red"),
            None: Text("n/a", "dim"),
        }[r.ok]
        table.add_row(Text(r.name), verdict, Text(r.detail))
    console = _console()
    console.print(table)
    for r in results:
        if r.ok is False and len(r.problems) > 1:
            console.print(Text(f"{r.name}:"))
            for p in r.problems[:20]:
                console.print(Text(f"  {p}"))
    if report is not None and not report.ok:
        click.echo(report.format(limit=20))
    failed = sum(r.ok is False for r in results)
    if failed:
        click.echo(f"{loss.name}: {failed} check(s) failed", err=True)
        sys.exit(1)
    click.echo(f"{loss.name}: all checks passed")


# ---------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------
def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",") if "," in text else text.split(":")
    if len(parts) != 2:
        _fail(f"--range {text!r}: expected LOW,HIGH, e.g. -6,6")
    return _number(parts[0], "--range"), _number(parts[1], "--range")


@cli.command()
@click.argument("loss_spec", metavar="NAME|FILE")
@_param_option("A param value, or several values (one curve each) for one param.", "NAME=V[,V...]")
@click.option(
    "--x",
    "axis",
    type=click.Choice(["logit", "p_t", "residual"]),
    help="The x axis; default from what the prediction is.",
)
@click.option("--target", type=float, help="The target (default 1; 0 for residuals).")
@click.option("--range", "x_range", metavar="LOW,HIGH", help="Range of the x axis.")
@click.option("--classes", default=2, show_default=True, help="Classes of class-axis losses.")
@click.option("--no-grad", is_flag=True, help="Draw the loss only, not its gradient.")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    help="Output file (.png, .svg, .pdf); default NAME.png.",
)
@click.option("--dpi", default=120, show_default=True, help="Resolution of raster output.")
def plot(
    loss_spec: str,
    param_options: tuple[str, ...],
    axis: str | None,
    target: float | None,
    x_range: str | None,
    classes: int,
    no_grad: bool,
    out: str | None,
    dpi: int,
) -> None:
    """Plot loss and gradient curves (matplotlib).

    Lin et al. (2017), fig. 1:

    \b
    customloss plot focal --param gamma=0,0.5,1,2,5 --x p_t --out focal.png
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("plot needs matplotlib: pip install 'customloss[plot]'")
    from customloss.plot import PRESETS, plot_loss

    loss = load_loss(loss_spec)
    fixed, swept, values = _params(loss, param_options, sweep=True)
    path = Path(out) if out else Path(f"{loss.name}.png")
    if not path.suffix:
        _fail(f"--out {str(path)!r}: give a file name with an extension (.png, .svg, .pdf)")
    with _user_errors():
        fig = plot_loss(
            loss,
            param=swept,
            values=values,
            x=axis,
            target=target,
            x_range=_range(x_range),
            params=fixed,
            classes=classes,
            gradient=not no_grad,
        )
        fig.savefig(path, dpi=dpi)
    preset = PRESETS.get(loss.name)
    if preset is not None and not any(k in fixed or k == swept for k in preset.params):
        click.echo(f"note: {preset.note} (set it with --param)")
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------
def _torch_references() -> dict[str, tuple[str, Callable[..., Any]]]:
    """Torch references for built-in losses: name -> (label, fn(input, target, params))."""
    import torch
    import torch.nn.functional as F

    def focal(x: Any, y: Any, p: dict[str, float]) -> Any:
        # torchvision.ops.sigmoid_focal_loss, reduction="mean", in torch ops
        prob = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = prob * y + (1 - prob) * (1 - y)
        out = ce * (1 - p_t) ** p["gamma"]
        if p["alpha"] >= 0:
            out = (p["alpha"] * y + (1 - p["alpha"]) * (1 - y)) * out
        return out.mean()

    return {
        "mse": ("F.mse_loss", lambda x, y, p: F.mse_loss(x, y)),
        "mae": ("F.l1_loss", lambda x, y, p: F.l1_loss(x, y)),
        "huber": ("F.huber_loss", lambda x, y, p: F.huber_loss(x, y, delta=p["delta"])),
        "smooth_l1": ("F.smooth_l1_loss", lambda x, y, p: F.smooth_l1_loss(x, y, beta=p["beta"])),
        "bce": ("F.binary_cross_entropy", lambda x, y, p: F.binary_cross_entropy(x, y)),
        "bce_with_logits": (
            "F.binary_cross_entropy_with_logits",
            lambda x, y, p: F.binary_cross_entropy_with_logits(
                x, y, pos_weight=torch.tensor(p["pos_weight"])
            ),
        ),
        "poisson_nll": (
            "F.poisson_nll_loss",
            lambda x, y, p: F.poisson_nll_loss(x, y, log_input=True, full=False),
        ),
        "focal": ("torchvision sigmoid_focal_loss formula", focal),
        "cross_entropy": (
            "F.cross_entropy",
            lambda x, y, p: F.cross_entropy(x, y, label_smoothing=p["label_smoothing"]),
        ),
        "kl_div": (
            "F.kl_div(log q, p, 'batchmean')",
            lambda x, y, p: F.kl_div(x.log(), y, reduction="batchmean"),
        ),
    }


def _bench_inputs(loss: Loss, n: int, classes: int) -> tuple[Any, Any]:
    import torch

    from customloss.plot import input_kind

    g = torch.Generator().manual_seed(0)
    kind = input_kind(loss)
    if loss.classes:
        rows = max(n // classes, 1)
        z = torch.randn(rows, classes, generator=g) * 2
        if loss.name == "cross_entropy":
            y = torch.randint(0, classes, (rows,), generator=g)
        else:
            y = torch.softmax(torch.randn(rows, classes, generator=g), dim=1)
        if kind == "probability":
            z = torch.softmax(z, dim=1)
        return z.requires_grad_(), y
    if kind == "value":
        return torch.randn(n, generator=g).requires_grad_(), torch.randn(n, generator=g)
    x = torch.randn(n, generator=g) * 3
    y = (torch.rand(n, generator=g) > 0.5).float()
    if kind == "probability":
        x = torch.sigmoid(x).clamp(1e-6, 1 - 1e-6)
    return x.requires_grad_(), y


@contextmanager
def _restore_env(name: str, value: str | None) -> Iterator[None]:
    """Put the environment variable ``name`` back to ``value`` on exit."""
    try:
        yield
    finally:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _median_ms(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Median milliseconds of each closure, timed round-robin (rotating order)."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


@cli.command()
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--all", "all_", is_flag=True, help="Every registered loss.")
@click.option("--n", default=1 << 20, show_default=True, help="Elements per input.")
@click.option("--classes", default=100, show_default=True, help="Classes of class-axis losses.")
@click.option("--reps", default=10, show_default=True, help="Timed repetitions (median).")
@click.option("--eager", is_flag=True, help="Time the eager kernels (no torch.compile).")
@click.option("--threads", type=int, help="torch intra-op threads (1 on a busy machine).")
def bench(
    names: tuple[str, ...],
    all_: bool,
    n: int,
    classes: int,
    reps: int,
    eager: bool,
    threads: int | None,
) -> None:
    """Forward + backward time of our loss vs the torch reference, where one exists.

    Our losses are compiled first (customloss.fast.compile_ahead) unless --eager or
    CUSTOMLOSS_COMPILE=0.  For the full benchmark suite see benchmarks/run.py.
    """
    try:
        import torch
    except ImportError:
        _fail("bench needs torch: pip install 'customloss[torch]'")
    import customloss
    from customloss import fast

    if all_ and names:
        _fail("give loss names or --all, not both")
    if not all_ and not names:
        _fail("name one or more losses, or pass --all")
    if n < 1 or reps < 1 or classes < 2:
        _fail("--n and --reps must be >= 1, --classes >= 2")
    if threads is not None:
        if threads < 1:
            _fail("--threads must be >= 1")
        torch.set_num_threads(threads)
    losses = [load_loss(s) for s in (names or customloss.names())]
    refs = _torch_references()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text

    rows: list[tuple[str, ...]] = []
    switch = os.environ.get(fast.ENV_SWITCH)
    if eager:
        os.environ[fast.ENV_SWITCH] = "0"
    with (
        _restore_env(fast.ENV_SWITCH, switch),
        Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            transient=False,
        ) as progress,
    ):
        task = progress.add_task("bench", total=len(losses))
        for loss in losses:
            progress.update(task, description=loss.name)
            rows.append(_bench_one(loss, refs, n, classes, reps, fast, torch))
            progress.advance(task)
    table = Table(
        box=None,
        header_style="bold",
        pad_edge=False,
        title=f"forward + backward, median of {reps} (ms)",
    )
    for column in ("loss", "ours", "reference", "reference ms", "ours / reference", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    _console().print(table)


def _bench_one(
    loss: Loss, refs: dict[str, Any], n: int, classes: int, reps: int, fast: Any, torch: Any
) -> tuple[str, ...]:
    missing = [k for k, v in loss.params.items() if v is None]
    if missing:
        return (loss.name, "-", "-", "-", "-", f"skipped: param {missing[0]!r} has no default")
    x, y = _bench_inputs(loss, n, classes)
    note = "eager" if fast.mode() == "off" else "compiled"
    try:
        statuses = fast.compile_ahead(loss, x.detach(), y)
    except Exception as exc:
        statuses, note = [], f"compile failed: {type(exc).__name__}"
    if any(s.state != "ready" for s in statuses):
        note = "eager (compile not ready)"

    def ours() -> None:
        x.grad = None
        loss(x, y).backward()

    fns = {"ours": ours}
    label = "-"
    ref_entry = refs.get(loss.name)
    import customloss

    if ref_entry is not None and customloss.info(loss.name).plugin == "builtin":
        label, ref_fn = ref_entry
        params = {k: v for k, v in loss.params.items()}

        def reference() -> None:
            x.grad = None
            ref_fn(x, y, params).backward()

        fns["reference"] = reference
    try:
        ms = _median_ms(fns, reps)
    except Exception as exc:
        return (loss.name, "-", label, "-", "-", f"failed: {type(exc).__name__}: {exc}")
    if "reference" not in ms:
        return (loss.name, _ms(ms["ours"]), "-", "-", "-", note)
    ratio = ms["ours"] / ms["reference"]
    return (loss.name, _ms(ms["ours"]), label, _ms(ms["reference"]), f"{ratio:.3g}x", note)


def _ms(v: float) -> str:
    """Milliseconds with 3 significant digits, without exponents."""
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------
def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    click.echo(f"customloss: warning: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (the ``customloss`` console script).

    Args:
        argv: the arguments; default ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="customloss",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("customloss: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:  # sys.exit() inside a command (check's status 1)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        warnings.showwarning = shown
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
