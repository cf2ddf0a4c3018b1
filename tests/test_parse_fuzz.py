"""Fuzzing the safe parser: ``customloss.define`` on hostile and pathological text.

What every case must show:

* nothing is executed: no file is opened, no module imported, no code object executed,
  no restricted attribute read (an audit hook records every audit event while the text
  is parsed; ``builtins.open``/``io.open`` raise and ``builtins.__import__`` refuses any
  module not already imported);
* every rejection is a ``ValueError`` with a message; any other exception is a failure;
* each parse finishes within a bounded time (1 s of CPU time: the work done, whatever
  the load of the machine running the tests);
* text built with a forbidden construct is always rejected.

The quick tests run a few hundred cases; the ``slow`` one runs 10,000.  Pathological but
legal expressions (deep nesting, enormous powers, huge sums and products) are in the
second half: refused by the limits in milliseconds, or accepted and then bounded
(differentiation and code generation included) -- each run in a subprocess with a
timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import io
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import customloss as cl
from customloss.parse import LIMITS


@pytest.fixture(autouse=True, scope="module")
def _no_disk_cache() -> Iterator[None]:
    """The parser alone: no disk cache (customloss.diskcache) during these tests.

    With the cache on, ``cl.define`` also reads and writes its own cache entries (a
    hash-named file under the cache directory, whatever the text): I/O of the library,
    not of the text, which the guard below would report as file access.
    """
    before = os.environ.get("CUSTOMLOSS_CACHE")
    os.environ["CUSTOMLOSS_CACHE"] = "0"
    yield
    if before is None:
        os.environ.pop("CUSTOMLOSS_CACHE", None)
    else:
        os.environ["CUSTOMLOSS_CACHE"] = before


INPUTS = ("p", "y")
PARAMS = {"k": 1.0}
TIME_LIMIT_S = 1.0

# ---------------------------------------------------------------------------
# the guard: audit events and patched builtins while a text is parsed
# ---------------------------------------------------------------------------
#: Audit events a parse may raise: ``compile`` (from ``ast.parse`` of the text itself,
#: checked below), ``builtins.id`` (SymPy's caches), and the ``compile``/``exec`` of
#: SymPy's own polynomial helpers (``sympy.polys.monomials`` builds ``monomial_mul`` & co.
#: from a fixed template on first use; recognised precisely below) and SymPy importing
#: its own submodules on first use (``import``/``open``/``marshal.loads``/``exec`` of files
#: inside the installed sympy and mpmath packages only).  Anything else -- ``open``,
#: ``import``, ``exec``, ``os.*``, ``subprocess.*``, ``socket.*``, ``ctypes.*``,
#: ``object.__getattr__`` on restricted attributes, ``pickle.find_class`` ... -- fails.
ALLOWED_EVENTS = frozenset({"compile", "builtins.id"})
#: Packages whose own lazy imports of their submodules are allowed during a parse.
TRUSTED_LAZY_IMPORTS = frozenset({"sympy", "mpmath"})


@dataclass
class _Recorder:
    active: bool = False
    thread: int | None = None
    source: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)
    lazy_imports: list[str] = field(default_factory=list)
    after_trusted_open: bool = False
    saw_lazy_import: bool = False


_RECORDER = _Recorder()
_HOOK_LOCK = threading.Lock()
_HOOKED = False


_MONOMIAL_FUNCTION = re.compile(r"def (monomial_[a-z]+)\(")


def _trusted_dirs() -> tuple[str, ...]:
    import mpmath
    import sympy

    return tuple(os.path.dirname(m.__file__) + os.sep for m in (sympy, mpmath))


_TRUSTED_DIRS = _trusted_dirs()


def _trusted_path(path: object) -> bool:
    """A file inside the installed SymPy or mpmath package."""
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(
        os.fsdecode(path)
    ).startswith(_TRUSTED_DIRS)


def _is_sympy_monomial_template(src: object) -> bool:
    """SymPy's MonomialOps source: only ``def monomial_<op>(...)`` over tuples of ints."""
    if not isinstance(src, str) or not src.startswith("def monomial_"):
        return False
    names = _MONOMIAL_FUNCTION.findall(src)
    return len(names) == 1 and all(c not in src for c in ("import", "__", "open", "exec", "eval"))


def _is_sympy_monomial_code(code: object) -> bool:
    """The module code object compiled from such a template."""
    if not isinstance(code, types.CodeType) or code.co_filename != "<string>":
        return False
    inner = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return len(inner) == 1 and inner[0].co_name.startswith("monomial_") and not code.co_names[1:]


def _audit(event: str, args: tuple[object, ...]) -> None:
    rec = _RECORDER
    if rec.thread != threading.get_ident():
        return
    if event == "import" and str(args[0]).split(".")[0] in TRUSTED_LAZY_IMPORTS:
        rec.saw_lazy_import = True  # also while suspended inside a guarded import
    if not rec.active:
        return
    if event == "compile":
        # ast.parse of the loss text itself (filename "<unknown>"), or SymPy's polynomial
        # code templates (sympy.polys.monomials: "def monomial_mul(A, B): ...")
        src, filename = (args + (None, None))[:2]
        if isinstance(src, bytes):
            src = src.decode("utf-8", "replace")
        if filename == "<unknown>" and src in (rec.source, rec.source.strip()):
            return
        if filename == "<string>" and _is_sympy_monomial_template(src):
            return
    elif event == "exec":
        code = args[0] if args else None
        if _is_sympy_monomial_code(code):
            return
        if isinstance(code, types.CodeType) and _trusted_path(code.co_filename):
            return  # a module of SymPy itself, imported lazily
    elif event == "import":
        if str(args[0]).split(".")[0] in TRUSTED_LAZY_IMPORTS:
            return
    elif event in ("open", "os.listdir", "os.scandir"):
        path, mode = (args + (None, None))[:2]
        if _trusted_path(path) and (mode is None or "r" in str(mode) or isinstance(mode, int)):
            rec.after_trusted_open = str(path).endswith(".pyc")
            return
    elif event == "marshal.loads" and rec.after_trusted_open:
        rec.after_trusted_open = False  # the bytecode of the trusted .pyc just opened
        return
    elif event in ALLOWED_EVENTS:
        return
    rec.events.append((event, repr(args)[:200]))


def _install_hook() -> None:
    global _HOOKED
    with _HOOK_LOCK:
        if not _HOOKED:  # audit hooks cannot be removed: one per process, idle by default
            sys.addaudithook(_audit)
            _HOOKED = True


class _Forbidden(Exception):
    """Raised by the patched builtins; must never escape as anything but a failure."""


@contextlib.contextmanager
def guarded(source: str) -> Iterator[_Recorder]:
    """Record audit events and forbid open/new imports while ``source`` is parsed."""
    _install_hook()
    real_import, real_open, real_io_open = builtins.__import__, builtins.open, io.open

    def no_new_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
        if level != 0 or name in sys.modules:
            return real_import(name, globals, locals, fromlist, level)
        if name.split(".")[0] not in TRUSTED_LAZY_IMPORTS:
            raise _Forbidden(f"import of {name!r} during a parse")
        # SymPy imports some of its own modules on first use: library code, not driven
        # by the text; its file reads and module execution are not the parser's doing
        _RECORDER.lazy_imports.append(name)
        _RECORDER.active = False
        try:
            return real_import(name, globals, locals, fromlist, level)
        finally:
            _RECORDER.active = True

    def no_open(*args: object, **kwargs: object) -> None:
        raise _Forbidden(f"open{args!r} during a parse")

    _RECORDER.events.clear()
    _RECORDER.lazy_imports.clear()
    _RECORDER.saw_lazy_import = False
    _RECORDER.source = source
    _RECORDER.thread = threading.get_ident()
    builtins.__import__, builtins.open, io.open = no_new_import, no_open, no_open  # type: ignore[assignment]
    _RECORDER.active = True
    try:
        yield _RECORDER
    finally:
        _RECORDER.active = False
        _RECORDER.thread = None
        builtins.__import__, builtins.open, io.open = real_import, real_open, real_io_open


@dataclass
class Outcome:
    """What one parse did."""

    source: str
    accepted: bool
    message: str
    seconds: float
    events: list[tuple[str, str]]
    lazy_import: bool = False


def parse(source: str) -> Outcome:
    """``cl.define`` under the guard; anything but a Loss or a ValueError fails the test.

    When SymPy imported one of its own modules during the parse (a one-off cost of the
    first use, not work the text caused) and the parse was slow, the time is taken from a
    second parse of the same text.
    """
    out = _parse_once(source)
    if out.seconds >= TIME_LIMIT_S and out.lazy_import:
        again = _parse_once(source)
        out.seconds = again.seconds
        out.events += again.events
    return out


def _parse_once(source: str) -> Outcome:
    with guarded(source) as rec:
        # CPU time: the work done, not the machine's load; the cyclic GC is paused so
        # that a collection of the whole (large, hypothesis-filled) heap is not billed
        # to the parse of one string
        gc_was_enabled = gc.isenabled()
        gc.disable()
        started = time.thread_time()
        try:
            cl.define("fuzz", source, inputs=INPUTS, params=PARAMS)
            accepted, message = True, ""
        except ValueError as exc:
            accepted, message = False, str(exc)
        except _Forbidden as exc:  # pragma: no cover - would be a security bug
            pytest.fail(f"the parser tried something forbidden on {source!r}: {exc}")
        except BaseException as exc:  # pragma: no cover - would be a robustness bug
            pytest.fail(f"{type(exc).__name__} (not ValueError) on {source!r}: {exc}")
        finally:
            seconds = time.thread_time() - started
            if gc_was_enabled:
                gc.enable()
        events = list(rec.events)
        lazy = rec.saw_lazy_import or bool(rec.lazy_imports)
    return Outcome(source, accepted, message, seconds, events, lazy)


def assert_safe(out: Outcome) -> None:
    assert not out.events, f"audit events while parsing {out.source!r}: {out.events}"
    assert out.accepted or out.message.strip(), f"empty ValueError message for {out.source!r}"
    assert out.seconds < TIME_LIMIT_S, f"parsing {out.source!r} took {out.seconds:.2f} s"


# Warm SymPy's lazy imports once, so that the first fuzz case is judged like the others.
# SymPy's first Add imports sympy.tensor.tensor; the defines below need not build one
# (with the disk cache on, shared by the xdist workers, they may be read back
# unevaluated), so it is imported here explicitly.
import sympy.tensor.tensor  # noqa: E402, F401

for _src in (
    "(p - y)**2*k",
    "where(p > y, log(sigmoid(p)), maximum(p, y))",
    "p.x",
    "sigmoid(where(pi < where(p == pi, 0.0, 4), 0.5, tanh(0.0)))",
    "where(p > 0 and y < 1 or not p > y, p, y)",
):
    with contextlib.suppress(ValueError):
        cl.define("warm", _src, inputs=INPUTS, params=PARAMS)


# ---------------------------------------------------------------------------
# the guard itself must see what it is meant to see
# ---------------------------------------------------------------------------
def test_guard_detects_open_import_and_exec() -> None:
    with guarded("x") as rec:
        with contextlib.suppress(_Forbidden):
            open("/dev/null")  # noqa: SIM115 - the point is that it is refused
        with contextlib.suppress(_Forbidden):
            __import__("customloss_module_that_is_not_imported")
        exec("1")  # an exec audit event
        os.close(os.open(os.devnull, os.O_RDONLY))  # an open audit event (not via builtins)
        events = [e for e, _ in rec.events]
    assert "exec" in events and "open" in events
    with pytest.raises(_Forbidden), guarded("x"):
        open("/dev/null")  # noqa: SIM115
    # and a legal parse raises nothing
    out = parse("log(sigmoid(p))*y + k")
    assert out.accepted and not out.events


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
DSL1 = ("log", "exp", "sqrt", "abs", "log1p", "tanh", "cosh", "sigmoid", "softplus",
        "log_sigmoid", "relu")  # fmt: skip
DSL2 = ("maximum", "minimum")
BAD_CALLEES = ("__import__", "open", "eval", "exec", "getattr", "compile", "globals",
               "vars", "type", "print", "breakpoint", "input", "setattr", "delattr")  # fmt: skip
BAD_NAMES = ("os", "sys", "yy", "__builtins__", "__loader__", "subprocess", "x", "q")
BAD_BINOPS = ("%", "//", "@", "&", "|", "^", "<<", ">>")
CMP = ("<", "<=", ">", ">=", "==", "!=")

Expr = tuple[str, bool]  # (source, contains a forbidden construct)

number = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e-3", "2.5e2", "0.5", "1_000", "0x10", "0o7", "0b101"]),
)
good_leaf: st.SearchStrategy[Expr] = st.one_of(
    st.sampled_from((*INPUTS, *PARAMS, "pi", "E")),
    number,
).map(lambda s: (s, False))
bad_leaf: st.SearchStrategy[Expr] = st.sampled_from(
    (*BAD_NAMES, "'os'", "b'x'", '"p"', "...", "None", "True", "1j", "f'{p}'")
).map(lambda s: (s, True))


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    def binop(a: Expr, b: Expr, op: str) -> Expr:
        return f"({a[0]} {op} {b[0]})", a[1] or b[1] or op in BAD_BINOPS

    def unary(op: str, a: Expr) -> Expr:
        return f"({op}{a[0]})", a[1] or op == "~"

    def call1(f: str, a: Expr) -> Expr:
        return f"{f}({a[0]})", a[1]

    def call2(f: str, a: Expr, b: Expr) -> Expr:
        return f"{f}({a[0]}, {b[0]})", a[1] or b[1]

    def where(a: Expr, op: str, b: Expr, c: Expr, d: Expr) -> Expr:
        return f"where({a[0]} {op} {b[0]}, {c[0]}, {d[0]})", a[1] or b[1] or c[1] or d[1]

    bad_forms = (
        "{a}.__class__", "{a}.real", "{a}.__globals__", "({a}).mro()", "{a}[{b}]", "{a}[0:1]",
        "(lambda: {a})", "(lambda q: {a})({b})", "[{a} for q in {b}]", "sum({a} for q in ())",
        "{{{a} for q in {b}}}", "({a} if {b} else {a})", "(q := {a})", "log(*{a})",
        "log({a}, base={b})", "[{a}, {b}]", "({a}, {b})", "{{{a}: {b}}}", "{{{a}}}",
        "f'{{{a}}}'", "log({a})({b})", "(await {a})", "(yield {a})", "({a} is {b})",
        "({a} in {b})", "{callee}({a})", "__import__('os').system({a})",
        "{a}; import os", "{a}\nimport os", "({a}).__class__.__mro__[1].__subclasses__()",
    )  # fmt: skip

    def bad(form: str, a: Expr, b: Expr, callee: str) -> Expr:
        return form.format(a=a[0], b=b[0], callee=callee), True

    return st.one_of(
        st.tuples(children, children, st.sampled_from(("+", "-", "*", "/", "**", *BAD_BINOPS))).map(
            lambda t: binop(*t)
        ),
        # "not" on arithmetic is left out: a known bug, see test_not_of_arithmetic_...
        st.tuples(st.sampled_from(("-", "+", "~")), children).map(lambda t: unary(*t)),
        st.tuples(st.sampled_from(DSL1), children).map(lambda t: call1(*t)),
        st.tuples(st.sampled_from(DSL2), children, children).map(lambda t: call2(*t)),
        st.tuples(children, st.sampled_from(CMP), children, children, children).map(
            lambda t: where(*t)
        ),
        st.tuples(st.sampled_from(bad_forms), children, children, st.sampled_from(BAD_CALLEES)).map(
            lambda t: bad(*t)
        ),
    )


#: Python expression source built from allowed and forbidden constructs.
expressions: st.SearchStrategy[Expr] = st.recursive(
    st.one_of(good_leaf, good_leaf, bad_leaf), _extend, max_leaves=40
)
#: Only allowed constructs (accepted, or refused for a limit or a domain reason).
legal_expressions: st.SearchStrategy[Expr] = st.recursive(
    good_leaf, lambda c: _extend(c).filter(lambda e: not e[1]), max_leaves=40
)
TOKENS = (
    *INPUTS, *PARAMS, *DSL1, *DSL2, *BAD_CALLEES, *BAD_NAMES, *BAD_BINOPS, *CMP,
    "(", ")", "[", "]", "{", "}", ",", ".", ":", ";", "=", "+", "-", "*", "/", "**",
    "lambda", "for", "in", "if", "else", "and", "or", "not", "import", "from", "await",
    "yield", "'", '"', "\\", "\n", "#", "@", "1", "0", "1e308", "9", "9**9**9", "...",
    "__class__", "__dict__", "__globals__", "__subclasses__", "where", "pi", "E", "\x00",
)  # fmt: skip
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join)
random_text = st.text(max_size=300)

FUZZ = settings(
    deadline=None,
    # no "explain" phase: it traces the test (frame.f_code reads are audit events)
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def fuzz(n: int) -> settings:
    """The fuzz settings with ``n`` examples."""
    return settings(FUZZ, max_examples=n)


def _check_expression(case: Expr) -> Outcome:
    source, forbidden = case
    out = parse(source)
    assert_safe(out)
    if forbidden:
        assert not out.accepted, f"forbidden construct accepted: {source!r}"
    return out


# ---------------------------------------------------------------------------
# quick fuzzing: a few hundred cases
# ---------------------------------------------------------------------------
@fuzz(150)
@given(random_text)
def test_fuzz_random_text(source: str) -> None:
    assert_safe(parse(source))


@fuzz(150)
@given(token_soup)
def test_fuzz_token_soup(source: str) -> None:
    assert_safe(parse(source))


@fuzz(250)
@given(expressions)
def test_fuzz_random_ast(case: Expr) -> None:
    _check_expression(case)


@fuzz(100)
@given(legal_expressions)
def test_fuzz_legal_ast_accepted_or_refused_with_reason(case: Expr) -> None:
    # allowed constructs only: accepted, or refused (a limit, 0/0, log(0), ...) with a
    # ValueError, in bounded time -- the SymPy work on accepted text is the point here
    _check_expression(case)


@pytest.mark.slow
@fuzz(150)
@given(legal_expressions)
def test_fuzz_legal_ast_accepted_losses_differentiate_and_compile(case: Expr) -> None:
    # what define accepts must also differentiate and compile, in bounded time, or be
    # refused with the reason (this found minimum(sigmoid(7), ...), which Min refused)
    source, _ = case
    try:
        loss = cl.define("fuzz", source, inputs=INPUTS, params=PARAMS)
    except ValueError:
        return
    started = time.process_time()
    try:
        loss.grad()
        loss.source("numpy")
    except ValueError as exc:
        # a derivative with no finite value (0.0**p: d/dp is nan) is refused, naming it
        assert "no finite value" in str(exc), f"{source!r}: {exc}"
    seconds = time.process_time() - started
    assert seconds < 10, f"differentiating and compiling {source!r} took {seconds:.1f} s"


# ---------------------------------------------------------------------------
# the 10,000-case run
# ---------------------------------------------------------------------------
@pytest.mark.slow
@fuzz(4000)
@given(expressions)
def test_fuzz_random_ast_10k_part(case: Expr) -> None:
    _check_expression(case)


@pytest.mark.slow
@fuzz(3000)
@given(random_text)
def test_fuzz_random_text_10k_part(source: str) -> None:
    assert_safe(parse(source))


@pytest.mark.slow
@fuzz(3000)
@given(token_soup)
def test_fuzz_token_soup_10k_part(source: str) -> None:
    assert_safe(parse(source))


# ---------------------------------------------------------------------------
# pathological but syntactically legal input
# ---------------------------------------------------------------------------
REFUSED = {
    # name: (source, words the message must contain)
    "too long": ("p + " * 2600 + "p", "too long"),
    "deep parentheses": ("(" * 1000 + "p" + ")" * 1000, "nested"),
    "deep unary minus": ("-" * 5000 + "p", "too complex"),
    "deep power chain": ("p" + "**p" * 3000, "too complex"),
    "huge sum": ("+".join(["p"] * 4999), "too"),
    "many factors": ("*".join(["999"] * 1500), "too large"),
    "nested 61 calls": ("exp(" * 61 + "p" + ")" * 61, "nested too deeply"),
    "power tower": ("9**9**9**9", "too large"),
    "param to a tower": ("p**(9**9**9)", "too large"),
    "enormous exponent": ("(p + y)**1000000", "too large"),
    "pi tower": ("pi**pi**pi**pi", "too large"),
    "long integer": ("1" * 5000, "integer"),
    "big integer literal": (str(2**200) + "*p", "too large"),
    "huge float power": ("1e300**2*p", "too large"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_pathological_refused_fast(name: str) -> None:
    source, words = REFUSED[name]
    out = parse(source)
    assert not out.accepted, f"{name}: accepted"
    assert words in out.message, out.message
    # the limits act before SymPy sees anything, so nothing is cached between two runs:
    # the faster of two measurements is the cost of refusing (the first may include a
    # one-off start-up cost of the worker process)
    seconds = min(out.seconds, parse(source).seconds)
    assert seconds < 0.2, f"{name}: {seconds:.3f} s of CPU to refuse"
    assert not out.events


def test_limits_are_what_the_docs_say() -> None:
    # docs/reliability.md quotes these numbers
    assert (LIMITS.max_length, LIMITS.max_nodes, LIMITS.max_depth) == (10_000, 2_000, 60)
    assert (LIMITS.max_int_bits, LIMITS.max_exponent) == (128, 1_000.0)
    assert (LIMITS.max_product_factors, LIMITS.max_power_tower, LIMITS.max_comparisons) == (
        64,
        3,
        64,
    )


_BOUNDED_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import customloss as cl
    import customloss.numpy_backend  # the code generator's runtime, outside the timing
    cl.define("warm", "log(sigmoid(p))*y", inputs=("p", "y")).source("numpy")  # lazy imports
    src = sys.stdin.read()
    out = {}
    t = time.process_time()
    try:
        loss = cl.define("patho", src, inputs=("p", "y"), params={"k": 1.0})
    except ValueError as exc:
        out["refused"] = str(exc)
    out["define"] = time.process_time() - t
    print(json.dumps(out), flush=True)
    if "refused" not in out:
        t = time.process_time(); loss.grad(); out["grad"] = time.process_time() - t
        print(json.dumps(out), flush=True)
        t = time.process_time(); loss.source("numpy"); out["compile"] = time.process_time() - t
        print(json.dumps(out), flush=True)
    """
)


def _bounded(source: str, timeout: float) -> dict[str, object]:
    """define, grad and code generation of ``source`` in a subprocess (killed at timeout)."""
    import json

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BOUNDED_SCRIPT], input=source, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 0, proc.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        lines = stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        result["timeout"] = timeout
        return result
    return json.loads(lines[-1])


ACCEPTED_QUICK = {
    "150 parentheses": "(" * 150 + "p" + ")" * 150,
    "power 1000": "(p + y)**1000",
    "nested exp 58": "exp(" * 58 + "p" + ")" * 58,
    "nested where 19": "where(p > 0, " * 19 + "p" + ", y)" * 19,
    "condition of 200 comparisons": "where("
    + " and ".join(f"p > {i}" for i in range(200))
    + ", p, y)",
}
ACCEPTED_SLOW = {
    **ACCEPTED_QUICK,
    "nested log-sigmoid 29": "log(sigmoid(" * 29 + "p" + "))" * 29,
    "nested maximum 29": "maximum(" * 29 + "p" + ", y)" * 29,
    "nested softplus 58": "softplus(" * 58 + "p" + ")" * 58,
    "sum of 400 powers": "+".join(f"p**{i}" for i in range(1, 400)),
    "symbolic power tower": "p**p**p**p**p**p**p**p",
}
# Findings: accepted by the limits, then unbounded SymPy work (see docs/reliability.md).
UNBOUNDED = {
    "product of 399 factors": "*".join(f"(p+{i})" for i in range(1, 400)),
    "product of 299 log-sigmoids": "*".join(f"log(sigmoid(p*{i}))" for i in range(1, 300)),
    "power chain of 31": "p" + "**p" * 30,
    # within every limit (7,700 characters, < 2,000 nodes), but ~2.4 ms of SymPy per
    # comparison: 1.6 s of CPU for define alone
    "condition of 650 comparisons": "where("
    + " and ".join(f"p > {i}" for i in range(650))
    + ", p, y)",
}
BOUND_DEFINE_S = 1.0
BOUND_TOTAL_S = 10.0


def _assert_bounded(name: str, source: str) -> None:
    result = _bounded(source, timeout=BOUND_TOTAL_S * 3)
    assert "timeout" not in result, f"{name}: still running after {result['timeout']} s: {result}"
    assert result["define"] < BOUND_DEFINE_S, f"{name}: define took {result['define']:.2f} s"
    total = sum(float(result.get(k, 0.0)) for k in ("define", "grad", "compile"))  # type: ignore[arg-type]
    assert total < BOUND_TOTAL_S, f"{name}: define + grad + code generation took {total:.1f} s"


def test_pathological_accepted_is_bounded_quick() -> None:
    # one subprocess for the whole set: a hang is a failure, not a stalled suite
    source = "+".join(f"({s})" for s in ACCEPTED_QUICK.values() if len(s) < 2000)
    _assert_bounded("quick set, summed", source[: LIMITS.max_length])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ACCEPTED_SLOW))
def test_pathological_accepted_is_bounded(name: str) -> None:
    _assert_bounded(name, ACCEPTED_SLOW[name])


# Once findings (unbounded SymPy work); now refused by the complexity limits of
# parse.py (product factors, power towers, comparisons) in milliseconds.
@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNBOUNDED))
def test_pathological_once_unbounded_now_refused(name: str) -> None:
    result = _bounded(UNBOUNDED[name], timeout=BOUND_TOTAL_S * 3)
    assert "refused" in result and "too" in str(result["refused"]), result
    assert float(result["define"]) < BOUND_DEFINE_S  # type: ignore[arg-type]


def test_constant_beyond_float_range_is_refused() -> None:
    out = parse("1e308*10*p")
    assert not out.accepted, "1e308*10 = 1e309 is not a float; the kernel would print 'inf'"


@pytest.mark.parametrize("source", ["p + (not p)", "tanh(not p)", "sqrt(not p)"])
def test_not_of_arithmetic_is_a_value_error(source: str) -> None:
    out = parse(source)  # fails the test on anything but a Loss or a ValueError
    assert not out.accepted
