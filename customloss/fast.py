"""Fast path: generated Torch kernels compiled with ``torch.compile`` (Inductor).

``torch_backend`` asks :func:`kernel_callable` for the callable that runs a generated
kernel.  This module answers with the *eager* kernel (``kernel.fn``, always correct)
or, once it is ready, with a ``torch.compile``-d version of it.  Inductor fuses the
whole CSE'd kernel (loss and gradient) into one C++/OpenMP loop on the CPU (Triton on
GPUs), so the dozen-odd elementwise passes of the eager kernel become one.

Default policy (the decision, and why)
--------------------------------------
A cold ``torch.compile`` costs seconds (focal on this project's 2-core CPU: 12.5 s in
a fresh process with an empty Inductor cache, 5.5 s with a warm one), which must never
stall a training step and must not slow the test suite.  Therefore:

* ``CUSTOMLOSS_COMPILE`` unset or ``auto`` (the default): a kernel is compiled in a
  **background thread** once it is *hot*: it has been called
  ``CUSTOMLOSS_COMPILE_WARMUP`` times (default 3) on inputs of at least
  ``CUSTOMLOSS_COMPILE_MIN_NUMEL`` elements (default 65536).  Until the compiled
  kernel is ready every call runs the eager kernel; then it is swapped in.  Small
  inputs (unit tests, toy examples) and one-off calls never trigger a compile.
* ``CUSTOMLOSS_COMPILE=0`` (also ``off``/``false``/``no``): always eager; nothing is
  compiled, not even by :func:`compile_ahead`.
* ``CUSTOMLOSS_COMPILE=1`` (also ``on``/``true``/``yes``): background compile on the
  first call of any size.
* ``CUSTOMLOSS_COMPILE=sync``: compile in the calling thread on the first call
  (blocks for the compile; for benchmarks and debugging).
* :func:`compile_ahead` compiles a loss's kernels *now*, e.g. before the training
  loop starts; calls after it use the compiled kernels from the first step.

Compilation is per kernel (``kernel.source`` is the cache key) and per *signature*
of the arguments (dtype, device, number of dimensions, which sizes are 0 or 1, which
sizes are equal, contiguity, ``requires_grad``, grad mode): exactly what
``torch.compile`` guards on with ``dynamic=True``, so a new batch size ``N`` reuses
the compiled kernel and never recompiles.  On the CPU the signature also records
whether the input is *large* (at least :data:`PARALLEL_MIN_NUMEL` = 32768 elements,
ATen's grain size): Inductor decides at compile time, from the example sizes, whether
its loop is OpenMP-parallel, and a parallel loop costs a thread fork/join that small
inputs should not pay, so large and small inputs get separate kernels (small ones
compiled with Inductor's ``cpp.threads=1``: a serial loop).  A call whose signature
has no compiled kernel yet runs eagerly (and, under the policy above, queues a compile).  Compiled
kernels are run through ``torch._dynamo.run`` (run-only mode): should a guard fail
anyway, Dynamo runs the eager code instead of compiling in the caller's thread.

Params that arrive as 0-d CPU tensors (the usual case: scalar defaults) are
*specialised*: their values are baked into the compiled kernel as constants (``gamma
= 2`` turns ``b**gamma`` into ``b*b``).  At most :data:`MAX_SPECIALIZATIONS` distinct
value sets are specialised per kernel; beyond that (a param schedule, say) the kernel
is compiled once with the params as tensors.  Params on a GPU are never
specialised (reading their value would synchronise the device).

All bookkeeping is guarded by one lock; compiles run one at a time in a single daemon
worker thread (Dynamo itself serialises compiles with its own lock).  The worker runs
at nice :data:`WORKER_NICE` (Linux, per thread; the C++ compiler processes it starts
inherit it) and shortens the GIL switch interval to
:data:`COMPILE_SWITCH_INTERVAL` while it compiles, so that a training thread, which
re-acquires the GIL after every torch op, is not held up for 5 ms each time.  If a compile
fails (no C++ compiler, an unsupported platform, ...), a warning is issued once and
the kernel stays eager for good.  Inside a ``torch.compile`` region of the user's own
code the eager kernel is returned, so the outer compile traces it.  A process forked
from one that imported this module (a ``DataLoader`` worker with the ``fork`` start
method) uses the kernels that were compiled before the fork and compiles nothing
itself: Inductor's compile workers belong to the parent, and a compile started in the
child would wait for them forever.

Caching on disk: Inductor keeps the generated C++/Triton code, the compiled shared
objects and its FX-graph and AOTAutograd caches under ``TORCHINDUCTOR_CACHE_DIR``
(default ``$TMPDIR/torchinductor_$USER``), shared across processes; a second process
compiling the same kernel skips code generation and the C++ compiler and only
re-traces with Dynamo.  See ``docs/performance.md``.

``kernel_callable(kernel, args, reduce="sum")`` returns the sum of the first output
instead of the elementwise values; compiled, the sum is fused into the kernel's loop
(the values are never stored).  ``torch_backend`` does not use it yet (see
``docs/performance.md``, proposal P1).

Results equal the eager kernel's to floating-point rounding (a few ulp: Inductor
uses vectorised SLEEF transcendental functions and may contract ``a*b+c``); the
tests check values and gradients, also at logits of +-1e4.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from customloss.codegen import Kernel

if TYPE_CHECKING:
    from customloss.loss import Loss

__all__ = [
    "DEFAULT_MIN_NUMEL",
    "DEFAULT_WARMUP",
    "ENV_MIN_NUMEL",
    "ENV_SWITCH",
    "ENV_WARMUP",
    "MAX_SIGNATURES",
    "PARALLEL_MIN_NUMEL",
    "MAX_SPECIALIZATIONS",
    "WORKER_NICE",
    "COMPILE_SWITCH_INTERVAL",
    "KernelStatus",
    "compile_ahead",
    "kernel_callable",
    "mode",
    "reset",
    "status",
    "wait",
]

#: Environment variable: ``0`` eager only, ``auto`` (default), ``1`` eager, ``sync``.
ENV_SWITCH = "CUSTOMLOSS_COMPILE"
#: Environment variable: smallest input (elements) that counts towards warm-up.
ENV_MIN_NUMEL = "CUSTOMLOSS_COMPILE_MIN_NUMEL"
#: Environment variable: calls on large inputs before a background compile starts.
ENV_WARMUP = "CUSTOMLOSS_COMPILE_WARMUP"
DEFAULT_MIN_NUMEL = 1 << 16
DEFAULT_WARMUP = 3
#: Distinct specialised param-value sets per kernel before falling back to tensors.
MAX_SPECIALIZATIONS = 4
#: Compiled signatures per kernel function (Dynamo's own recompile limit is 8).
MAX_SIGNATURES = 6
#: On the CPU, inputs with at least this many elements get a kernel compiled with an
#: OpenMP-parallel loop, smaller ones a serial kernel (ATen's grain size, 32768).
PARALLEL_MIN_NUMEL = 1 << 15

_OFF = frozenset({"0", "off", "false", "no", "eager"})
_ON = frozenset({"1", "on", "true", "yes"})

COLD, QUEUED, COMPILING, READY, FAILED, SKIPPED = (
    "cold",
    "queued",
    "compiling",
    "ready",
    "failed",
    "skipped",
)


def mode() -> str:
    """The fast-path mode from ``CUSTOMLOSS_COMPILE``, read on every call.

    Returns:
        ``"off"``, ``"auto"``, ``"on"`` or ``"sync"`` (unknown values mean ``"auto"``).
    """
    raw = os.environ.get(ENV_SWITCH, "").strip().lower()
    if raw in _OFF:
        return "off"
    if raw in _ON:
        return "on"
    if raw == "sync":
        return "sync"
    return "auto"


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass
class _ArgTemplate:
    """What a compile needs to know about one argument (never the data itself)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: Any
    device: Any
    requires_grad: bool
    contiguous: bool


@dataclass(eq=False)
class _Entry:
    """One kernel function (generic or specialised) at one argument signature."""

    name: str
    function: Callable[..., tuple[Any, ...]]
    templates: tuple[_ArgTemplate, ...]
    grad_enabled: bool
    specialized: tuple[tuple[int, float], ...]
    large: bool = False
    serial: bool = False
    state: str = COLD
    hot_calls: int = 0
    eager_calls: int = 0
    compiled_calls: int = 0
    compile_seconds: float | None = None
    error: str | None = None
    runner: Callable[..., tuple[Any, ...]] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class KernelStatus:
    """Public view of one compiled (or compilable) kernel signature.

    Attributes:
        name: the generated function's name.
        state: ``cold``, ``queued``, ``compiling``, ``ready``, ``failed`` or ``skipped``.
        specialized: ``(argument position, value)`` of params baked in as constants.
        eager_calls: calls served by the eager kernel.
        compiled_calls: calls served by the compiled kernel.
        compile_seconds: wall time of the compile, once finished.
        error: why the compile failed or was skipped.
        large: compiled for large CPU inputs (a parallel loop).
    """

    name: str
    state: str
    specialized: tuple[tuple[int, float], ...]
    eager_calls: int
    compiled_calls: int
    compile_seconds: float | None
    error: str | None
    large: bool = False


_LOCK = threading.RLock()
_ENTRIES: dict[tuple, _Entry] = {}
#: (kernel source) -> specialised value sets seen so far.
_SPECS: dict[str, set[tuple[tuple[int, float], ...]]] = {}
#: (kernel source, specialisation) -> the Python function that gets compiled.
_FUNCTIONS: dict[tuple, Callable[..., tuple[Any, ...]]] = {}
#: id(function) -> number of signatures compiled for it.
_SIGNATURES: dict[int, int] = {}
_QUEUE: queue.Queue[_Entry | None] = queue.Queue()
_WORKER: threading.Thread | None = None
_WARNED: set[str] = set()
_LOCAL = threading.local()


#: True in a process forked from one that imported this module (DataLoader workers):
#: kernels compiled before the fork are used, nothing new is compiled (see _after_fork)
_FORKED = False


def _after_fork() -> None:
    """In a forked child: fresh locks and queue, no compiles.

    The parent's compile thread does not exist in the child, a lock another thread held
    at the fork stays held forever, and Inductor's compile workers (a process pool)
    belong to the parent: a compile started in the child waits for them forever.  So
    the child keeps the kernels that were ready, runs everything else eagerly, and
    marks the compiles that were queued or running as skipped (``wait()`` returns).
    A parent that never compiled (no compile thread, Inductor's compile machinery never
    loaded: a launcher that only imported customloss) leaves the child free to compile.
    """
    global _LOCK, _QUEUE, _WORKER, _LOCAL, _FORKED
    compiled_before = (
        _WORKER is not None
        or any(e.state != COLD for e in _ENTRIES.values())
        or "torch._inductor.async_compile" in sys.modules
    )
    _LOCK = threading.RLock()
    _QUEUE = queue.Queue()
    _WORKER = None
    _LOCAL = threading.local()
    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None)
    if getattr(compiler, "_is_compiling_flag", False):
        # set process-wide by a compile that was running in another thread of the
        # parent; no thread of the child is compiling
        compiler._is_compiling_flag = False
    if not compiled_before:
        return
    _FORKED = True
    for e in _ENTRIES.values():
        if e.state in (COLD, QUEUED, COMPILING):
            e.state = SKIPPED
            e.error = "forked child process: kernels are compiled in the parent only"
            e.done = threading.Event()
            e.done.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _is_compiling(torch: Any) -> bool:
    """Whether *this thread* is being traced (torch.compile, AOTAutograd, export).

    ``torch.compiler.is_compiling()`` alone reads a process-wide flag (torch 2.13): while
    our background compile runs, the training thread would take the traced branches
    (the review saw index errors turn into async asserts and compiled kernels skipped).
    Dynamo folds ``is_dynamo_compiling()`` to True inside a trace; other tracing (the
    AOTAutograd pass over a backward) runs under a ``TracingContext``, which is
    thread-local.
    """
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    dynamo = getattr(compiler, "is_dynamo_compiling", None)
    if dynamo is not None and dynamo():
        return True
    if not compiler.is_compiling():
        return False
    context = getattr(
        getattr(getattr(torch, "_guards", None), "TracingContext", None), "try_get", None
    )
    return context is None or context() is not None


def _specialization(
    kernel: Kernel, args: tuple[Any, ...], torch: Any
) -> tuple[tuple[int, float], ...]:
    """Params (positions >= 2) that are finite 0-d CPU float tensors not needing grad.

    (``inf``/``nan`` stay runtime arguments: their ``repr`` is no Python literal, and
    ``nan != nan`` would take a new specialisation slot on every call.)
    """
    spec = []
    for i in range(2, len(args)):
        a = args[i]
        if (
            isinstance(a, torch.Tensor)
            and a.dim() == 0
            and a.device.type == "cpu"
            and a.is_floating_point()
            and not a.requires_grad
        ):
            value = float(a.item())
            if math.isfinite(value):
                spec.append((i, value))
    return tuple(spec)


def _signature(args: tuple[Any, ...], skip: frozenset[int], torch: Any) -> tuple:
    """What Dynamo guards on with ``dynamic=True``, for the arguments not in ``skip``."""
    sig: list[Any] = []
    first_seen: dict[int, int] = {}
    pos = 0
    for i, a in enumerate(args):
        if i in skip:
            continue
        if not isinstance(a, torch.Tensor):
            sig.append(("py", type(a).__name__, a))
            continue
        sizes = []
        for s in a.shape:
            if s < 2:
                sizes.append(s)
            else:
                sizes.append(-1 - first_seen.setdefault(s, pos))
            pos += 1
        sig.append((a.dtype, a.device, tuple(sizes), a.is_contiguous(), a.requires_grad))
    return tuple(sig)


def _function_for(
    kernel: Kernel,
    spec: tuple[tuple[int, float], ...],
    nargs: int,
    reduce: str | None = None,
    parallel: bool = False,
) -> Callable[..., tuple[Any, ...]]:
    """The Python function to compile (or run eagerly).

    The kernel itself, or a generated wrapper that passes specialised params as
    constants and/or sums the first output (``reduce="sum"``), so that Inductor fuses
    the reduction into the kernel's loop and the elementwise values are never stored.
    A ``parallel`` variant is always a wrapper of its own: Dynamo keeps compiled code
    per code object and selects it by guards alone, which do not see the input size,
    so serial and parallel compiled code must live on different code objects.
    """
    if not spec and reduce is None and not parallel:
        return kernel.fn
    key = (kernel.source, spec, reduce, parallel)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        fixed = dict(spec)
        names = [f"a{i}" for i in range(nargs)]
        call = [repr(fixed[i]) if i in fixed else names[i] for i in range(nargs)]
        ident = kernel.fn.__name__
        if spec:
            ident += f"_specialized_{len(_SPECS.get(kernel.source, ()))}"
        if reduce:
            ident += f"_{reduce}"
        if parallel:
            ident += "_parallel"
        body = f"_kernel({', '.join(call)})"
        if reduce == "sum":
            body = f"(lambda _o: (_o[0].sum(), *_o[1:]))({body})"
        source = f"def {ident}({', '.join(names)}):\n    return {body}\n"
        namespace: dict[str, Any] = {"_kernel": kernel.fn}
        exec(compile(source, f"<customloss-fast {ident}>", "exec"), namespace)
        fn = namespace[ident]
        _FUNCTIONS[key] = fn
    return fn


def _eager_for(kernel: Kernel, nargs: int, reduce: str | None) -> Callable[..., tuple[Any, ...]]:
    if reduce is None:
        return kernel.fn
    # a hit needs no lock (torch.compile traces a user's model through here, and Dynamo
    # cannot enter a lock); building one takes it
    fn = _FUNCTIONS.get((kernel.source, (), reduce, False))
    if fn is not None:
        return fn
    with _LOCK:
        return _function_for(kernel, (), nargs, reduce)


def _template(a: Any, torch: Any) -> _ArgTemplate | Any:
    if not isinstance(a, torch.Tensor):
        return a
    return _ArgTemplate(
        tuple(a.shape),
        tuple(a.stride()),
        a.dtype,
        a.device,
        a.requires_grad,
        a.is_contiguous(),
    )


def _examples(templates: tuple[Any, ...], torch: Any, large: bool = False) -> list[Any]:
    """Stand-in arguments for a compile: same signature, no shared data.

    Inductor decides from the example sizes whether the C++ loop is OpenMP-parallel
    (and, on GPUs, picks Triton block sizes).  For a ``large`` signature (and on GPUs)
    the real sizes are used; otherwise, when
    every tensor is contiguous, sizes >= 2 are replaced by small distinct sizes (equal
    sizes stay equal), which gives a serial loop and keeps the compile cheap.
    Non-contiguous tensors keep their exact sizes and strides.
    """
    tensors = [t for t in templates if isinstance(t, _ArgTemplate)]
    small = not large and all(t.contiguous for t in tensors)
    remap: dict[int, int] = {}
    out: list[Any] = []
    for t in templates:
        if not isinstance(t, _ArgTemplate):
            out.append(t)
            continue
        if small:
            shape = tuple(s if s < 2 else remap.setdefault(s, 2 + len(remap)) for s in t.shape)
            x = torch.zeros(shape, dtype=t.dtype, device=t.device)
        elif t.contiguous:
            x = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        else:
            extent = (
                1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride, strict=True))
                if all(t.shape)
                else 0
            )
            x = torch.zeros(extent, dtype=t.dtype, device=t.device).as_strided(t.shape, t.stride)
        out.append(x.requires_grad_(t.requires_grad))
    return out


def _compile(entry: _Entry, background: bool = False) -> None:
    """Compile ``entry`` (in whichever thread calls this) and mark it ready or failed.

    ``background``: shorten the GIL switch interval while compiling (restored before
    the entry is marked done).
    """
    import torch

    with _LOCK:
        if entry.state in (READY, FAILED, SKIPPED, COMPILING):
            return
        if mode() == "off":
            entry.state = SKIPPED
            entry.error = f"{ENV_SWITCH}=0"
            entry.done.set()
            return
        entry.state = COMPILING
    start = time.perf_counter()
    polite = _short_switch_interval() if background else contextlib.nullcontext()
    try:
        with polite:
            # serial code for small CPU inputs: one thread, no OpenMP region (also a
            # different Inductor cache key from the parallel variant's)
            options = {"cpp.threads": 1} if entry.serial else None
            compiled = torch.compile(entry.function, dynamic=True, options=options)
            # real sizes except for serial CPU kernels: size hints steer Inductor's
            # parallelisation (CPU) and Triton's block sizes (GPU)
            examples = _examples(entry.templates, torch, not entry.serial)
            with torch.set_grad_enabled(entry.grad_enabled):
                compiled(*examples)
            runner = torch._dynamo.run(entry.function)
    except Exception as exc:  # any failure leaves the always-correct eager path
        with _LOCK:
            entry.state = FAILED
            entry.error = f"{type(exc).__name__}: {exc}"
            entry.compile_seconds = time.perf_counter() - start
            entry.done.set()
        if entry.name not in _WARNED:
            _WARNED.add(entry.name)
            warnings.warn(
                f"customloss: torch.compile of kernel {entry.name!r} failed; using the "
                f"eager kernel ({type(exc).__name__}: {str(exc)[:300]})",
                RuntimeWarning,
                stacklevel=2,
            )
        return
    with _LOCK:
        entry.runner = runner
        entry.compile_seconds = time.perf_counter() - start
        entry.state = READY
        entry.done.set()


#: Background compiles run at this nice value (Linux: per thread, inherited by the
#: compiler processes they start), so training threads win the CPU.
WORKER_NICE = 5
#: While a background compile runs, the interpreter's GIL switch interval (seconds):
#: a training thread waiting for the GIL after each torch op waits at most this long
#: (Python's default is 5 ms, which turns ~40 ops per step into ~200 ms of waiting).
COMPILE_SWITCH_INTERVAL = 0.0005


def _lower_priority() -> None:
    """Make the calling thread (and processes it starts) yield the CPU to others."""
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        # on Linux a thread id names one thread, not the whole process
        setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


@contextlib.contextmanager
def _short_switch_interval() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, COMPILE_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _worker_loop() -> None:
    _lower_priority()
    while True:
        entry = _QUEUE.get()
        try:
            if entry is None:
                return
            _compile(entry, background=True)
        finally:
            _QUEUE.task_done()


def _enqueue(entry: _Entry) -> None:
    global _WORKER
    entry.state = QUEUED
    if _WORKER is None or not _WORKER.is_alive():
        _WORKER = threading.Thread(target=_worker_loop, name="customloss-compile", daemon=True)
        _WORKER.start()
    _QUEUE.put(entry)


def kernel_callable(
    kernel: Kernel, args: tuple[Any, ...], *, reduce: str | None = None
) -> Callable[..., tuple[Any, ...]]:
    """The callable to run ``kernel`` on ``args``: compiled when ready, else eager.

    Args:
        kernel: a generated kernel (``kernel.fn`` is the eager function).
        args: the arguments it is about to be called with (tensors: prediction,
            target, then params).
        reduce: ``None``, or ``"sum"`` to get the sum of the first output (a 0-d
            tensor) instead of the elementwise values; compiled, the sum is fused
            into the kernel's loop and the values are never stored.

    Returns:
        A function taking the same arguments as ``kernel.fn`` and returning the same
        tuple of tensors (with the first one summed when ``reduce="sum"``).
    """
    if reduce not in (None, "sum"):
        raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
    torch = sys.modules.get("torch")
    if torch is not None and _is_compiling(torch):
        # inside the user's torch.compile region: the eager kernel, traced by the outer
        # compile (checked first: no lock, no bookkeeping, which Dynamo cannot trace)
        return _eager_for(kernel, len(args), reduce)
    eager = _eager_for(kernel, len(args), reduce)
    m = mode()
    if m == "off" or not args:
        return eager
    if _FORKED:  # a forked child: what the parent compiled, else eager (see _after_fork)
        m = "forked"
    if torch is None or not isinstance(args[0], torch.Tensor):
        return eager
    if any(
        isinstance(a, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(a)
        for a in args
    ):
        # under a torch.func transform (vmap, grad, jvp): the eager kernel, which the
        # transform runs op by op (a compiled runner, or reading a param with .item()
        # to specialise it, cannot see through a batched tensor)
        return eager
    sync = m == "sync" or (m != "forked" and getattr(_LOCAL, "sync", False))
    spec = _specialization(kernel, args, torch)
    with _LOCK:
        if spec:
            seen = _SPECS.setdefault(kernel.source, set())
            if spec not in seen and len(seen) >= MAX_SPECIALIZATIONS:
                spec = ()
            else:
                seen.add(spec)
        skip = frozenset(i for i, _ in spec)
        large = (
            args[0].device.type == "cpu"
            and max((a.numel() for a in args if isinstance(a, torch.Tensor)), default=0)
            >= PARALLEL_MIN_NUMEL
        )
        key = (
            large,
            kernel.source,
            spec,
            reduce,
            _signature(args, skip, torch),
            torch.is_grad_enabled(),
        )
        entry = _ENTRIES.get(key)
        if entry is None and m == "forked":
            return eager
        if entry is None:
            function = _function_for(kernel, spec, len(args), reduce, large)
            entry = _Entry(
                name=getattr(function, "__name__", "kernel"),
                function=function,
                templates=tuple(_template(a, torch) for a in args),
                grad_enabled=torch.is_grad_enabled(),
                specialized=spec,
                large=large,
                serial=not large and args[0].device.type == "cpu",
            )
            count = _SIGNATURES.get(id(function), 0)
            if count >= MAX_SIGNATURES:
                entry.state = SKIPPED
                entry.error = f"more than {MAX_SIGNATURES} signatures for this kernel"
                entry.done.set()
            else:
                _SIGNATURES[id(function)] = count + 1
            _ENTRIES[key] = entry
        if entry.state == COLD and not sync and m != "forked":
            if m == "on":
                _enqueue(entry)
            elif args[0].numel() >= _env_int(ENV_MIN_NUMEL, DEFAULT_MIN_NUMEL):
                entry.hot_calls += 1
                if entry.hot_calls >= _env_int(ENV_WARMUP, DEFAULT_WARMUP):
                    _enqueue(entry)
    if sync and entry.state in (COLD, QUEUED, COMPILING):
        _compile(entry)  # returns at once if another thread is compiling it
        entry.done.wait()
    with _LOCK:
        if hasattr(_LOCAL, "touched"):
            _LOCAL.touched.append(entry)
        if entry.state == READY and entry.runner is not None:
            entry.compiled_calls += 1
            return entry.runner
        entry.eager_calls += 1
    return eager


@contextlib.contextmanager
def _sync_compiles() -> Iterator[list[_Entry]]:
    """Within this block, this thread compiles kernels on first use (blocking)."""
    previous = getattr(_LOCAL, "sync", False)
    _LOCAL.sync = True
    _LOCAL.touched = []
    try:
        yield _LOCAL.touched
    finally:
        _LOCAL.sync = previous
        del _LOCAL.touched


def compile_ahead(
    loss: Loss,
    input: Any = None,
    target: Any = None,
    *,
    requires_grad: tuple[bool, ...] = (True, False),
    **params: Any,
) -> list[KernelStatus]:
    """Compile ``loss``'s Torch kernels now, blocking, for inputs like these.

    Call it before the training loop: the first training step then already runs the
    compiled kernels (a cold compile takes seconds; with a warm Inductor disk cache
    about two).  Sizes do not matter (shapes are dynamic); dtype, device, number of
    dimensions and the params' kinds do.  Does nothing with ``CUSTOMLOSS_COMPILE=0``.

    Args:
        loss: the loss.
        input: an example prediction tensor; default ``torch.randn(65536)``.  On the
            CPU, inputs of at least :data:`PARALLEL_MIN_NUMEL` elements and smaller ones
            get different kernels (parallel / serial loop): give an example of the
            size you will train with.
        target: an example target; default zeros like ``input``.
        requires_grad: compile for training (``True``: the fused loss-and-gradient
            kernel) and/or evaluation (``False``: the value kernel).
        **params: param values, as they will be passed at call time.

    Returns:
        The status of every kernel signature the example calls used.
    """
    if mode() == "off":
        return []
    import torch

    if input is None:
        input = torch.randn(1 << 16)
    if target is None:
        target = torch.zeros_like(input)
    statuses: list[KernelStatus] = []
    with _sync_compiles() as touched:
        for rg in requires_grad:
            x = input.detach().clone().requires_grad_(rg)
            loss(x, target, **params)
        statuses = [_status(e) for e in dict.fromkeys(touched)]
    return statuses


def _status(entry: _Entry) -> KernelStatus:
    return KernelStatus(
        entry.name,
        entry.state,
        entry.specialized,
        entry.eager_calls,
        entry.compiled_calls,
        entry.compile_seconds,
        entry.error,
        entry.large,
    )


def status() -> list[KernelStatus]:
    """The state of every kernel signature seen in this process."""
    with _LOCK:
        return [_status(e) for e in _ENTRIES.values()]


def wait(timeout: float | None = None) -> bool:
    """Block until queued background compiles have finished.

    Args:
        timeout: seconds to wait at most; ``None`` waits for all.

    Returns:
        ``True`` when no compile is queued or running any more.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _LOCK:
            pending = [e for e in _ENTRIES.values() if e.state in (QUEUED, COMPILING)]
        if not pending:
            return True
        for e in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not e.done.wait(left):
                return False


def reset() -> None:
    """Forget all compiled kernels of this process (they run eagerly again).

    Queued compiles are abandoned; a compile already running finishes but is not
    used.  Dynamo's own caches are left alone.
    """
    with _LOCK:
        for e in _ENTRIES.values():
            if e.state == QUEUED:
                e.state = SKIPPED
                e.error = "reset"
                e.done.set()
        _ENTRIES.clear()
        _SPECS.clear()
        _FUNCTIONS.clear()
        _SIGNATURES.clear()
