"""Tests of the fast path (``customloss.fast``): the switch, the policy, thread safety,
and compiled == eager (values and gradients, also at extreme logits).

Tests that really run ``torch.compile`` are marked ``slow`` (seconds each); the others
replace the compile step and stay fast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import customloss as cl  # noqa: E402
from customloss import fast  # noqa: E402

EXTREME = [-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4]


# Kernels are cached by mathematics (expression and names), not by loss name, and the
# status filters below go by the generated function's name: these losses use input
# names no other test module uses, so their kernels are built here, under these names.


@cl.loss(params={"alpha": 0.25, "gamma": 2.0})
def focal(xf, yf, alpha, gamma):
    p = cl.sigmoid(xf)
    ce = -(yf * cl.log(p) + (1 - yf) * cl.log(1 - p))
    p_t = p * yf + (1 - p) * (1 - yf)
    return (alpha * yf + (1 - alpha) * (1 - yf)) * ce * (1 - p_t) ** gamma


NAIVE_BCE = cl.define(
    "naive_bce", "-(yn*log(sigmoid(xn)) + (1 - yn)*log(1 - sigmoid(xn)))", inputs=("xn", "yn")
)
HUBER = cl.define(
    "huber_fast_test",
    "where(abs(ph - yh) < delta, 0.5*(ph - yh)**2, delta*(abs(ph - yh) - 0.5*delta))",
    inputs=("ph", "yh"),
    params={"delta": 1.0},
)
ASYMMETRIC = cl.define(
    "asymmetric",
    "-(ya*(1 - sigmoid(xa))**gp*log(sigmoid(xa))"
    " + (1 - ya)*maximum(sigmoid(xa) - m, 0)**gn*log(1 - maximum(sigmoid(xa) - m, 0)))",
    inputs=("xa", "ya"),
    params={"gp": 1.0, "gn": 4.0, "m": 0.05},
)
MSE = cl.define("mse_fast_test", "(pm - ym)**2", inputs=("pm", "ym"))


@pytest.fixture(autouse=True)
def clean_fast_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts and ends with no compiled kernels and the default policy."""
    for name in (fast.ENV_SWITCH, fast.ENV_MIN_NUMEL, fast.ENV_WARMUP):
        monkeypatch.delenv(name, raising=False)
    fast.reset()
    yield
    fast.reset()


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the background compile by a recorder (no torch.compile)."""
    queued: list[Any] = []

    def record(entry: Any) -> None:
        entry.state = fast.QUEUED
        queued.append(entry)

    monkeypatch.setattr(fast, "_enqueue", record)
    return queued


def _kernel(loss: cl.Loss = MSE) -> Any:
    return loss._kernel("torch", (loss.inputs[0],), value=True)


def _args(n: int, *params: float, requires_grad: bool = True) -> tuple[Any, ...]:
    x = torch.randn(n).requires_grad_(requires_grad)
    return (x, torch.rand(n), *(torch.tensor(p) for p in params))


# --------------------------------------------------------------------------- switch


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "auto"),
        ("", "auto"),
        ("auto", "auto"),
        ("0", "off"),
        ("off", "off"),
        ("False", "off"),
        ("1", "on"),
        ("yes", "on"),
        ("sync", "sync"),
        ("whatever", "auto"),
    ],
)
def test_mode_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: str
) -> None:
    if raw is not None:
        monkeypatch.setenv(fast.ENV_SWITCH, raw)
    assert fast.mode() == expected


def test_compile_off_forces_eager_and_records_nothing(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "0")
    monkeypatch.setenv(fast.ENV_MIN_NUMEL, "1")
    monkeypatch.setenv(fast.ENV_WARMUP, "1")
    k = _kernel()
    args = _args(1000)
    for _ in range(5):
        assert fast.kernel_callable(k, args) is k.fn
    assert fast.status() == []
    assert fake_compile == []


def test_compile_off_makes_compile_ahead_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "0")

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("torch.compile must not be called")

    monkeypatch.setattr(torch, "compile", boom)
    assert fast.compile_ahead(MSE) == []
    assert fast.status() == []


def test_small_inputs_never_trigger_a_compile(fake_compile: list[Any]) -> None:
    x = torch.randn(100, requires_grad=True)
    y = torch.randn(100)
    for _ in range(10):
        MSE(x, y).backward()
    assert fake_compile == []
    (st,) = [s for s in fast.status() if s.name.startswith("mse_fast_test")]
    assert st.state == "cold"
    assert st.eager_calls == 10 and st.compiled_calls == 0


def test_warm_up_count_then_one_background_compile(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    monkeypatch.setenv(fast.ENV_MIN_NUMEL, "50")
    monkeypatch.setenv(fast.ENV_WARMUP, "3")
    k = _kernel()
    big, small = _args(64), _args(10)
    for _ in range(5):
        assert fast.kernel_callable(k, small) is k.fn
    assert fake_compile == []
    fast.kernel_callable(k, big)
    fast.kernel_callable(k, big)
    assert fake_compile == []
    assert fast.kernel_callable(k, big) is k.fn  # still eager while compiling
    assert len(fake_compile) == 1
    for _ in range(3):
        fast.kernel_callable(k, big)
    assert len(fake_compile) == 1


def test_mode_on_queues_at_first_call_of_any_size(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    k = _kernel()
    fast.kernel_callable(k, _args(3))
    assert len(fake_compile) == 1


def test_ready_kernel_is_served_and_eager_is_not(fake_compile: list[Any]) -> None:
    k = _kernel()
    args = _args(10)
    fast.kernel_callable(k, args)
    (entry,) = fast._ENTRIES.values()

    def runner(*a: Any) -> tuple[Any, ...]:
        return k.fn(*a)

    entry.runner, entry.state = runner, fast.READY
    assert fast.kernel_callable(k, args) is runner
    assert fast.kernel_callable(k, _args(12345)) is runner  # another N: same kernel


def test_reduce_sum_eager_sums_the_values_and_keeps_the_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "0")
    k = _kernel(focal)
    args = _args(100, 0.25, 2.0)
    with torch.no_grad():
        total, d = fast.kernel_callable(k, args, reduce="sum")(*args)
        values, d_ref = k.fn(*args)
    assert total.dim() == 0
    torch.testing.assert_close(total, values.sum())
    torch.testing.assert_close(d, d_ref, rtol=0, atol=0)


def test_reduce_rejects_unknown_reductions() -> None:
    with pytest.raises(ValueError, match="reduce must be None or 'sum'"):
        fast.kernel_callable(_kernel(), _args(3), reduce="mean")


def test_reduce_variant_is_a_separate_kernel(fake_compile: list[Any]) -> None:
    k = _kernel()
    args = _args(10)
    fast.kernel_callable(k, args)
    fast.kernel_callable(k, args, reduce="sum")
    names = sorted(s.name for s in fast.status())
    assert len(names) == 2 and names[1].endswith("_sum")


# --------------------------------------------------------------------------- signatures


def test_signature_ignores_sizes_but_not_dtype_grad_or_size_one() -> None:
    sig = fast._signature
    no = frozenset()
    a = sig((torch.randn(10), torch.randn(10)), no, torch)
    assert a == sig((torch.randn(999), torch.randn(999)), no, torch)
    assert a != sig((torch.randn(10).double(), torch.randn(10).double()), no, torch)
    assert a != sig((torch.randn(10, requires_grad=True), torch.randn(10)), no, torch)
    assert a != sig((torch.randn(1), torch.randn(1)), no, torch)
    assert a != sig((torch.randn(10, 1), torch.randn(10, 1)), no, torch)
    # equal sizes stay equal (Dynamo's duck sizing), distinct ones distinct
    assert sig((torch.randn(3, 3),), no, torch) != sig((torch.randn(3, 4),), no, torch)
    assert sig((torch.randn(3, 3),), no, torch) == sig((torch.randn(7, 7),), no, torch)
    assert a != sig((torch.randn(20)[::2], torch.randn(10)), no, torch)  # not contiguous


def test_large_and_small_cpu_inputs_get_separate_kernels(fake_compile: list[Any]) -> None:
    k = _kernel()
    fast.kernel_callable(k, _args(100))
    fast.kernel_callable(k, _args(fast.PARALLEL_MIN_NUMEL - 1))
    fast.kernel_callable(k, _args(fast.PARALLEL_MIN_NUMEL))
    fast.kernel_callable(k, _args(10 * fast.PARALLEL_MIN_NUMEL))
    assert sorted((s.large, s.eager_calls) for s in fast.status()) == [(False, 2), (True, 2)]
    names = {s.large: s.name for s in fast.status()}
    assert names[True].endswith("_parallel") and not names[False].endswith("_parallel")


def test_scalar_params_are_specialised_tensor_params_are_not(fake_compile: list[Any]) -> None:
    k = _kernel(focal)
    fast.kernel_callable(k, _args(10, 0.25, 2.0))
    x, y = torch.randn(10, requires_grad=True), torch.rand(10)
    fast.kernel_callable(k, (x, y, torch.full((10,), 0.25), torch.tensor(2.0)))
    specs = sorted(s.specialized for s in fast.status())
    assert specs == [((2, 0.25), (3, 2.0)), ((3, 2.0),)]


def test_specialisations_are_bounded(fake_compile: list[Any]) -> None:
    k = _kernel(focal)
    for gamma in range(fast.MAX_SPECIALIZATIONS + 3):
        fast.kernel_callable(k, _args(10, 0.25, float(gamma)))
    specs = {s.specialized for s in fast.status()}
    assert len(specs) == fast.MAX_SPECIALIZATIONS + 1
    assert () in specs  # the rest share the generic kernel


def test_specialised_function_matches_the_kernel() -> None:
    k = _kernel(focal)
    fn = fast._function_for(k, ((2, 0.25), (3, 2.0)), 4)
    args = _args(50, 0.25, 2.0)
    with torch.no_grad():
        for got, want in zip(fn(*args), k.fn(*args), strict=True):
            # pow(b, 2.0) with a Python vs a tensor exponent: an ulp apart, which the
            # gradient's cancelling terms can turn into a small absolute difference
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_compile_examples_keep_the_size_pattern_and_strides() -> None:
    t = fast._template
    small = fast._examples(
        (t(torch.randn(500, 7), torch), t(torch.randn(500, 7), torch), t(torch.randn(7), torch)),
        torch,
    )
    assert [tuple(e.shape) for e in small] == [(2, 3), (2, 3), (3,)]
    large = fast._examples(
        (t(torch.randn(40000), torch), t(torch.randn(40000), torch)), torch, True
    )
    assert [tuple(e.shape) for e in large] == [(40000,), (40000,)]
    base = torch.randn(10, 1).expand(10, 6)
    odd = fast._examples((t(base, torch), t(torch.randn(10, 6).t(), torch)), torch)
    assert odd[0].shape == (10, 6) and odd[0].stride() == base.stride()
    assert odd[1].stride() == (1, 6)


# --------------------------------------------------------------------------- robustness


def test_failed_compile_warns_once_and_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "sync")

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(20, requires_grad=True)
    y = torch.randn(20)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        v = MSE(x, y)
    v.backward()
    torch.testing.assert_close(v, F.mse_loss(x, y))
    torch.testing.assert_close(x.grad, 2 * (x - y).detach() / 20)
    states = {s.state for s in fast.status()}
    assert states == {"failed"}
    MSE(x, y)  # a second call neither recompiles nor warns
    assert {s.state for s in fast.status()} == {"failed"}


def test_inside_a_user_compile_region_the_eager_kernel_is_returned(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    monkeypatch.setattr(torch.compiler, "is_dynamo_compiling", lambda: True)
    k = _kernel()
    assert fast.kernel_callable(k, _args(10)) is k.fn
    assert fake_compile == [] and fast.status() == []


def test_another_threads_compile_is_not_a_trace_of_this_thread(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    # (session-6 review) torch.compiler.is_compiling() reads a process-wide flag that
    # our own background compile sets: the training thread took the traced branches
    # (an out-of-range class index became an async assert, compiled kernels skipped)
    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch._guards.TracingContext.try_get() is None
    assert not fast._is_compiling(torch)
    k = _kernel()
    fast.kernel_callable(k, _args(10))
    assert len(fake_compile) == 1  # the ordinary path: queued for a compile
    ce = cl.get("cross_entropy")
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        ce(torch.randn(2, 3), torch.tensor([0, 3]))
    import torch.autograd.forward_ad as fwad

    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, dtype=torch.float64)
    with fwad.dual_level():
        out = cl.get("mse")(fwad.make_dual(x, torch.ones(4, dtype=torch.float64)), y)
        tangent = fwad.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, (2 * (x - y)).mean().detach())


def test_concurrent_calls_queue_one_compile_and_count_every_call(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    monkeypatch.setenv(fast.ENV_MIN_NUMEL, "1")
    monkeypatch.setenv(fast.ENV_WARMUP, "5")
    x = torch.randn(256)
    y = torch.randn(256)
    expected = F.mse_loss(x, y)
    n_threads, calls = 8, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(calls):
                xi = x.clone().requires_grad_()
                v = MSE(xi, y)
                v.backward()
                torch.testing.assert_close(v, expected)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fake_compile) == 1
    (st,) = [s for s in fast.status() if s.name.startswith("mse_fast_test")]
    assert st.eager_calls == n_threads * calls


def test_sync_compile_in_many_threads_compiles_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "sync")
    calls: list[int] = []
    gate = threading.Event()

    def fake_torch_compile(fn: Any, **kwargs: Any) -> Any:
        calls.append(1)
        gate.wait(5)  # keep the first compile busy while the others arrive
        return fn

    monkeypatch.setattr(torch, "compile", fake_torch_compile)
    monkeypatch.setattr(torch._dynamo, "run", lambda fn: fn)
    k = _kernel()
    args = _args(30)
    results: list[Any] = []

    def work() -> None:
        results.append(fast.kernel_callable(k, args))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 6 and all(r is k.fn for r in results)  # run(fn) -> fn here
    (st,) = fast.status()
    assert st.state == "ready" and st.compiled_calls == 6


def test_background_worker_compiles_politely_and_swaps_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import sys

    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    seen: dict[str, Any] = {}

    def fake_torch_compile(fn: Any, **kwargs: Any) -> Any:
        seen["switch"] = sys.getswitchinterval()
        seen["thread"] = threading.current_thread().name
        if hasattr(os, "getpriority") and sys.platform.startswith("linux"):
            seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["options"] = kwargs.get("options")
        return fn

    monkeypatch.setattr(torch, "compile", fake_torch_compile)
    monkeypatch.setattr(torch._dynamo, "run", lambda fn: fn)
    before = sys.getswitchinterval()
    k = _kernel()
    args = _args(100)
    assert fast.kernel_callable(k, args) is k.fn  # eager while the worker compiles
    assert fast.wait(timeout=30)
    assert seen["thread"] == "customloss-compile"
    assert seen["switch"] <= fast.COMPILE_SWITCH_INTERVAL
    assert sys.getswitchinterval() == before
    if "nice" in seen:
        assert seen["nice"] >= fast.WORKER_NICE
    assert seen["options"] == {"cpp.threads": 1}  # a small CPU input: serial loop
    (st,) = fast.status()
    assert st.state == "ready"
    assert fast.kernel_callable(k, args) is k.fn  # run(fn) is fn here: the ready path
    assert fast.status()[0].compiled_calls == 1


# --------------------------------------------------------------------------- compiled == eager


def _fwd_bwd(loss: cl.Loss, x: Any, y: Any, **params: Any) -> tuple[Any, Any]:
    xr = x.detach().clone().requires_grad_()
    v = loss(xr, y, reduction="sum", **params)
    v.backward()
    return v.detach(), xr.grad


def _assert_compiled_equals_eager(
    monkeypatch: pytest.MonkeyPatch, loss: cl.Loss, x: Any, y: Any, **params: Any
) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "0")
    v_eager, g_eager = _fwd_bwd(loss, x, y, **params)
    monkeypatch.setenv(fast.ENV_SWITCH, "auto")
    statuses = fast.compile_ahead(loss, x.detach(), y, **params)
    assert statuses and all(s.state == "ready" for s in statuses), statuses
    with torch.profiler.profile() as prof:
        v, g = _fwd_bwd(loss, x, y, **params)
    assert any("Torch-Compiled Region" in e.name for e in prof.events()), "compiled code not run"
    assert torch.isfinite(v) and torch.isfinite(g).all()
    tol = (
        {"rtol": 1e-5, "atol": 1e-6} if x.dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    )
    torch.testing.assert_close(v, v_eager, **tol)
    torch.testing.assert_close(g, g_eager, **tol)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", [focal, NAIVE_BCE, ASYMMETRIC], ids=lambda loss: loss.name)
def test_compiled_equals_eager_at_extreme_logits(
    monkeypatch: pytest.MonkeyPatch, loss: cl.Loss, dtype: Any
) -> None:
    logits = torch.tensor(EXTREME, dtype=dtype)
    x = torch.cat([logits, logits, torch.randn(200, dtype=dtype) * 8])
    y = torch.cat(
        [torch.zeros(len(EXTREME)), torch.ones(len(EXTREME)), torch.rand(200).round()]
    ).to(dtype)
    _assert_compiled_equals_eager(monkeypatch, loss, x, y)


@pytest.mark.slow
def test_naive_bce_compiled_equals_torch_at_extreme_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "sync")
    x = torch.tensor(EXTREME * 2, requires_grad=True)
    y = torch.tensor([0.0] * len(EXTREME) + [1.0] * len(EXTREME))
    v = NAIVE_BCE(x, y, reduction="none")
    assert any(s.compiled_calls for s in fast.status())
    torch.testing.assert_close(v, F.binary_cross_entropy_with_logits(x, y, reduction="none"))
    v.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_compiled_equals_eager_with_overridden_and_tensor_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.cat([torch.tensor(EXTREME), torch.randn(300) * 4])
    y = torch.rand(len(x)).round()
    _assert_compiled_equals_eager(monkeypatch, focal, x, y, gamma=0.5, alpha=0.9)
    alpha = torch.rand(len(x))  # per-element param: the generic (tensor) kernel
    _assert_compiled_equals_eager(monkeypatch, focal, x, y, alpha=alpha)
    xr = torch.randn(300) * 3
    yr = torch.randn(300)
    _assert_compiled_equals_eager(monkeypatch, HUBER, xr, yr, delta=0.3)


@pytest.mark.slow
def test_compiled_sum_reduction_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_SWITCH, "sync")
    k = _kernel(focal)
    x = torch.cat([torch.tensor(EXTREME), torch.randn(5000) * 4]).requires_grad_()
    args = (x, torch.rand(len(x)).round(), torch.tensor(0.25), torch.tensor(2.0))
    with torch.no_grad():
        total, d = fast.kernel_callable(k, args, reduce="sum")(*args)
        values, d_ref = k.fn(*args)
    (st,) = fast.status()
    assert st.state == "ready" and st.compiled_calls == 1 and st.name.endswith("_sum")
    torch.testing.assert_close(total, values.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_one_compile_serves_every_n(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = fast.compile_ahead(MSE)  # large inputs: a parallel loop
    statuses += fast.compile_ahead(MSE, torch.randn(8))  # small inputs: a serial loop
    assert len(statuses) == 4 and all(s.state == "ready" for s in statuses)
    assert sorted(s.large for s in statuses) == [False, False, True, True]
    n_entries = len(fast.status())
    for n in (2, 17, 1000, 40_000, 100_003):
        x = torch.randn(n, requires_grad=True)
        y = torch.randn(n)
        with torch.profiler.profile() as prof:
            v = MSE(x, y)
            v.backward()
        assert any("Torch-Compiled Region" in e.name for e in prof.events()), n
        torch.testing.assert_close(v, F.mse_loss(x, y))
        torch.testing.assert_close(x.grad, 2 * (x - y).detach() / n)
    assert len(fast.status()) == n_entries  # no new signature, no new compile


@pytest.mark.slow
def test_background_compile_is_swapped_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ENV_MIN_NUMEL, "1")
    monkeypatch.setenv(fast.ENV_WARMUP, "2")
    x = torch.randn(5000, requires_grad=True)
    y = torch.randn(5000)
    ref = F.huber_loss(x, y, delta=1.0)
    for _ in range(2):
        torch.testing.assert_close(HUBER(x, y), ref)  # eager, queues the compile
    assert fast.wait(timeout=300)
    (st,) = [s for s in fast.status() if s.name.startswith("huber_fast_test")]
    assert st.state == "ready", st
    before = st.compiled_calls
    v = HUBER(x, y)
    v.backward()
    torch.testing.assert_close(v, ref)
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.huber_loss(x, y), x)[0])
    (st,) = [s for s in fast.status() if s.name.startswith("huber_fast_test")]
    assert st.compiled_calls == before + 1


# --------------------------------------------------------------------------- specialised params


@pytest.mark.slow
def test_compiled_kernels_with_a_condition_on_a_specialised_param(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a param given as a number is specialised to a constant in the compiled wrapper;
    # `not (k > 0 and k < 2)` then is a Python bool, and ~True is -2 (the compile
    # failed and the kernel stayed eager). Reference: the formula in torch.
    loss = cl.define(
        "not_k", "where(not ((k > 0) and (k < 2)), p**2, p)", inputs=("p", "y"), params={"k": 1.0}
    )
    x = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.float64)
    for k in (1.0, 3.0):
        statuses = fast.compile_ahead(loss, x, y, k=k)
        assert statuses and all(s.state == "ready" for s in statuses), statuses
        v, g = _fwd_bwd(loss, x, y, k=k)
        xr = x.clone().requires_grad_()
        ref = (xr**2 if not (0 < k < 2) else xr).sum()
        ref.backward()
        torch.testing.assert_close(v, ref.detach())
        torch.testing.assert_close(g, xr.grad)


@pytest.mark.slow
@pytest.mark.parametrize("c", [float("inf"), float("nan")])
def test_non_finite_params_are_not_specialised(monkeypatch: pytest.MonkeyPatch, c: float) -> None:
    # repr(inf) is no Python literal: the specialised wrapper failed to compile
    loss = cl.define("clip", "minimum(abs(p - y), c)", inputs=("p", "y"), params={"c": 1.0})
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.float64)
    statuses = fast.compile_ahead(loss, x, y, c=c)
    assert statuses and all(s.state == "ready" for s in statuses), statuses
    assert all(not s.specialized for s in statuses)
    v, g = _fwd_bwd(loss, x, y, c=c)
    ref = torch.minimum(x.abs(), torch.tensor(c, dtype=torch.float64)).sum()
    torch.testing.assert_close(v, ref, equal_nan=True)
    monkeypatch.setenv(fast.ENV_SWITCH, "0")  # the compiled gradient is the eager one
    torch.testing.assert_close(g, _fwd_bwd(loss, x, y, c=c)[1], equal_nan=True)
    if c == float("inf"):  # |x| everywhere
        torch.testing.assert_close(g, torch.sign(x))


_FORK_SCRIPT = r"""
import os, sys
os.environ["CUSTOMLOSS_COMPILE"] = "1"
import torch, torch.nn.functional as F
import customloss as cl
from customloss import fast

torch.set_num_threads(1)
fast._enqueue = lambda entry: setattr(entry, "state", fast.QUEUED)  # queued, never run
huber = cl.get("huber")
x, y = torch.randn(64, requires_grad=True), torch.randn(64)
huber(x, y).backward()  # a queued compile (training kernel)
huber(x.detach(), y)  # another one (the value kernel)
entries = list(fast._ENTRIES.values())
ready = entries[0]  # pretend the training kernel finished compiling before the fork
calls = []
ready.runner = lambda *a: (calls.append(1), ready.function(*a))[1]
ready.state = fast.READY
pid = os.fork()
if pid == 0:
    ok = []
    states = [(e.state, e.error) for e in entries]
    ok.append(states[0] == (fast.READY, None))
    ok.append(states[1][0] == fast.SKIPPED and "forked child" in states[1][1])
    ok.append(fast.wait(timeout=5))
    os.environ["CUSTOMLOSS_COMPILE"] = "sync"  # would compile in the caller: not here
    before = len(fast._ENTRIES)
    z = torch.randn(4, 16, requires_grad=True)
    t = torch.randn(4, 16)
    v = huber(z, t)
    v.backward()
    ok.append(torch.allclose(v, F.huber_loss(z, t)))
    ok.append(len(fast._ENTRIES) == before)  # nothing new, nothing compiled
    x2 = torch.randn(64, requires_grad=True)
    huber(x2, y).backward()  # the kernel compiled before the fork serves the child
    ok.append(calls == [1])
    print("child", ok, flush=True)
    os._exit(0 if all(ok) else 1)
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status))
"""


def _run_fork_script(tmp_path: Any, source: str, child_checks: int) -> None:
    """Run a script that forks; its child prints ``child [checks]``, all True."""
    import subprocess
    import sys

    script = tmp_path / "fork.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"child {[True] * child_checks}" in out.stdout
    assert out.stdout.strip().endswith("exit 0")


def test_a_forked_child_uses_ready_kernels_and_compiles_nothing(tmp_path):
    # DataLoader workers (fork): the parent's compile thread and Inductor's compile
    # workers are not the child's; a compile started there waited forever
    _run_fork_script(tmp_path, _FORK_SCRIPT, 6)


_FORK_UNCOMPILED_SCRIPT = r"""
import os
os.environ["CUSTOMLOSS_COMPILE"] = "1"
import torch
import customloss as cl
from customloss import fast

queued = []
fast._enqueue = lambda entry: (setattr(entry, "state", fast.QUEUED), queued.append(entry))
mse = cl.get("mse")
# another thread of the parent compiling at the fork (the flag is process-wide)
torch.compiler._is_compiling_flag = True
pid = os.fork()
if pid == 0:
    ok = [not fast._FORKED, not torch.compiler.is_compiling()]
    mse(torch.randn(8, requires_grad=True), torch.randn(8)).backward()
    ok.append(len(queued) == 1)  # the child compiles: its parent never did
    print("child", ok, flush=True)
    os._exit(0 if all(ok) else 1)
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status))
"""


def test_a_child_of_a_parent_that_never_compiled_may_compile(tmp_path):
    # (session-6 review) any child of a process that merely imported customloss never
    # compiled, and a fork during a compile left the process-wide flag set in the child
    _run_fork_script(tmp_path, _FORK_UNCOMPILED_SCRIPT, 3)


def test_evaluation_with_and_without_no_grad_shares_one_kernel(
    monkeypatch: pytest.MonkeyPatch, fake_compile: list[Any]
) -> None:
    # (session-6 review) the direct forward for inputs needing no gradient ran with the
    # caller's grad mode, so compile_ahead's evaluation kernel (grad off) did not serve
    # an evaluation call with grad on, nor the reverse: a second, cold signature
    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    x, y = torch.randn(64), torch.randn(64)
    ce = cl.get("cross_entropy")
    z, t = torch.randn(8, 5), torch.randint(0, 5, (8,))
    MSE(x, y)
    ce(z, t)
    with torch.no_grad():
        MSE(x, y)
        ce(z, t)
    with torch.inference_mode():
        MSE(x, y)
        ce(z, t)
    assert len(fake_compile) == 2
    torch.testing.assert_close(MSE(x, y), F.mse_loss(x, y))


def _compile_inputs(loss: cl.Loss) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    c = 5
    params = {"counts": torch.tensor([50.0, 20, 10, 5, 1])} if "counts" in loss.params else {}
    prob = loss.domains.get(loss.inputs[0]) == "probability" or loss.name == "msle"
    if loss.classes:
        x = torch.randn(8, c, generator=gen)
        x = torch.softmax(x, 1) if prob else x
        y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
        if prob:  # probability predictions take probability targets
            y = torch.softmax(torch.randn(8, c, generator=gen), 1)
    else:
        x = torch.rand(8, generator=gen) * 0.9 + 0.05 if prob else torch.randn(8, generator=gen)
        y = torch.rand(8, generator=gen)
        if loss.domains.get(loss.inputs[1]) == "sign":
            y = torch.where(y > 0.5, 1.0, -1.0)
    return x.requires_grad_(True), y, params


@pytest.fixture(scope="session")
def warm_disk_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A disk cache that an earlier process filled with every registered loss's kernels."""
    import sys

    path = str(tmp_path_factory.mktemp("warm-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTOMLOSS_CACHE_DIR", path)
        mp.setattr(sys.modules["customloss.loss"], "_ARTEFACTS", {})
        for name in cl.names():
            cl.get(name).prepare()
    return path


@pytest.fixture(params=["empty disk cache", "warm disk cache"])
def no_kernels_yet(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh process: no loss has generated a kernel or wrapper yet in memory;
    the disk cache is off, or was filled by an earlier process (then kernels come from
    disk and the symbolic work behind them never runs: the session-6 review found a
    gather decision first made inside the trace)."""
    import sys

    if request.param == "warm disk cache":
        monkeypatch.setenv("CUSTOMLOSS_CACHE_DIR", request.getfixturevalue("warm_disk_cache"))
    else:
        monkeypatch.setenv("CUSTOMLOSS_CACHE", "0")
    monkeypatch.setattr(sys.modules["customloss.loss"], "_ARTEFACTS", {})
    monkeypatch.setattr(fast, "_FUNCTIONS", {})


def _compiled_first(crit: Any, x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
    """The fullgraph-compiled module's value and d/dx, traced before any eager call,
    then the eager module's."""
    import torch

    torch._dynamo.reset()
    compiled = torch.compile(crit, backend="eager", fullgraph=True)
    value = compiled(x, y)
    (grad,) = torch.autograd.grad(value, x)
    ref = crit(x, y)
    (gref,) = torch.autograd.grad(ref, x)
    return value, grad, ref, gref


@pytest.mark.slow
@pytest.mark.parametrize("name", cl.names())
def test_a_model_with_the_loss_compiles_as_one_graph(name, no_kernels_yet):
    # torch.compile(model, fullgraph=True) traces through a fresh Loss.torch() (no graph
    # break: no importlib, locks, SymPy, storage pointers or read-backs on the traced
    # path; the module generated its kernels when it was built) and gives the eager
    # model's value and gradient
    import torch

    loss = cl.get(name)
    x, y, params = _compile_inputs(loss)
    value, grad, ref, gref = _compiled_first(loss.torch(**params), x, y)
    assert torch.isfinite(ref)
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, gref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["focal", "cross_entropy"])
def test_a_fresh_module_compiles_as_one_graph_before_any_eager_call(name, no_kernels_yet):
    import torch

    loss = cl.get(name)
    x, y, params = _compile_inputs(loss)
    value, grad, ref, gref = _compiled_first(loss.torch(**params), x, y)
    if name == "focal":  # torchvision's formula (alpha 0.25, gamma 2), by hand
        p = torch.sigmoid(x)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        alpha_t = 0.25 * y + 0.75 * (1 - y)
        expected = (alpha_t * ce * (1 - p_t) ** 2).mean()
    else:
        expected = torch.nn.functional.cross_entropy(x, y)
    (gexp,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, gexp)
    torch.testing.assert_close(ref, expected)


def test_a_learned_param_compiles_as_one_graph(no_kernels_yet):
    # backward also differentiates the module's nn.Parameter: that kernel exists too
    import torch

    gamma = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    crit = cl.get("focal").torch(gamma=gamma)
    x, y, _ = _compile_inputs(cl.get("focal"))
    torch._dynamo.reset()
    compiled = torch.compile(crit, backend="eager", fullgraph=True)
    dx, dgamma = torch.autograd.grad(compiled(x, y), (x, gamma))
    g = gamma.detach().clone().requires_grad_(True)
    p = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    expected = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** g).mean()
    ex, eg = torch.autograd.grad(expected, (x, g))
    torch.testing.assert_close(dx, ex)
    torch.testing.assert_close(dgamma, eg.to(dgamma.dtype))


def test_per_call_params_compile_as_one_graph(no_kernels_yet):
    # (session-6 review) a number param given per call went through NumPy's domain
    # check, which Dynamo cannot trace; a prepared loss called as a function
    import torch

    focal, ce = cl.get("focal").prepare(), cl.get("cross_entropy").prepare()
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, generator=gen), torch.rand(16, generator=gen).round()
    z, t = torch.randn(8, 4, generator=gen), torch.randint(0, 4, (8,), generator=gen)

    def step(x, z):
        return focal(x, y, gamma=3.0, alpha=0.5) + ce(z, t, label_smoothing=0.1)

    def reference(x, z):
        p = torch.sigmoid(x)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        fl = ((0.5 * y + 0.5 * (1 - y)) * bce * (1 - p_t) ** 3).mean()
        return fl + torch.nn.functional.cross_entropy(z, t, label_smoothing=0.1)

    torch._dynamo.reset()
    xs, zs = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    value = torch.compile(step, backend="eager", fullgraph=True)(xs, zs)
    gx, gz = torch.autograd.grad(value, (xs, zs))
    xr, zr = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected = reference(xr, zr)
    ex, ez = torch.autograd.grad(expected, (xr, zr))
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gz, ez)
    with pytest.raises(ValueError, match="param 'gamma' must be >= 0"):
        focal(x, y, gamma=-1.0)


def test_a_prepared_class_loss_with_default_zero_params_compiles_as_one_graph(no_kernels_yet):
    # (session-6 review) label_smoothing's default 0.0 selects a kernel specialised to
    # it, which prepare() did not build; a per-call 0 falls back to the general kernel
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(9)
    z, t = torch.randn(6, 4, generator=gen), torch.randint(0, 4, (6,), generator=gen)
    ce = cl.get("cross_entropy").prepare()
    crit = cl.get("cross_entropy").torch()
    for fn in (lambda a: ce(a, t), lambda a: crit(a, t, label_smoothing=0.0)):
        torch._dynamo.reset()
        a = z.clone().requires_grad_(True)
        value = torch.compile(fn, backend="eager", fullgraph=True)(a)
        (grad,) = torch.autograd.grad(value, a)
        b = z.clone().requires_grad_(True)
        expected = F.cross_entropy(b, t)
        (gexp,) = torch.autograd.grad(expected, b)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(grad, gexp)


def test_an_out_of_domain_number_is_named_inside_a_compiled_region():
    import torch

    q = cl.get("quantile").prepare()
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: q(a, b, q=1.5), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=r"param 'q' must be in \[0, 1\]; found 1.5"):
        compiled(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match=r"param 'q' must be in \[0, 1\]; found 1000"):
        q(torch.randn(4), torch.randn(4), q=10**400)


def test_prepare_names_an_unknown_param():
    with pytest.raises(ValueError, match="prepare.*'nope'"):
        cl.get("focal").prepare(wrt=["nope"])


def test_compiled_cross_entropy_still_refuses_an_out_of_range_class():
    import torch

    crit = cl.get("cross_entropy").torch()
    z, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    crit(z, t)
    torch._dynamo.reset()
    compiled = torch.compile(crit, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(z, t), torch.nn.functional.cross_entropy(z, t))
    with pytest.raises(RuntimeError, match="class-index target out of range"):
        compiled(z, torch.tensor([0, 1, 3, 1]))
