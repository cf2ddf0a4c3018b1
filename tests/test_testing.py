"""Tests for customloss.testing (the conformance kit) and customloss.pytest_plugin."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy
import torch

import customloss as cl
from customloss.loss import Loss
from customloss.testing import (
    CHECKS,
    ConformanceError,
    ConformanceReport,
    check_loss,
    sample_inputs,
)

loss_module = importlib.import_module("customloss.loss")
torch_backend = importlib.import_module("customloss.torch_backend")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

FOCAL = (
    "alpha_t * -(y*log_sigmoid(x) + (1-y)*log_sigmoid(-x))"
    " * (1 - (y*sigmoid(x) + (1-y)*(1-sigmoid(x))))**gamma"
)


def _focal() -> Loss:
    # torchvision.ops.sigmoid_focal_loss, written by a user in the DSL
    src = FOCAL.replace("alpha_t", "(alpha*y + (1-alpha)*(1-y))")
    return cl.define("user_focal", src, inputs=("x", "y"), params={"alpha": 0.25, "gamma": 2.0})


# ---------------------------------------------------------------------------
# user-defined losses that conform
# ---------------------------------------------------------------------------
def test_user_focal_passes_every_check() -> None:
    # gamma and alpha fixed (not learned): the scan covers d/dx and d/dy; the d/dgamma
    # finding is the strict xfail below
    report = check_loss(_focal(), extreme_values={"wrt": ("x", "y")})
    assert report.ok, str(report)
    assert [r.name for r in report.results] == list(CHECKS)
    assert all(r.status == "passed" for r in report.results)
    text = str(report)
    assert text.startswith("check_loss('user_focal'): all checks passed")
    assert "PASS gradgradcheck" in text and "PASS thread_safety" in text


def test_user_focal_with_learnable_gamma_passes_the_scan() -> None:
    check_loss(_focal(), checks=["extreme_values"], extreme_values={"wrt": ("gamma",)})


@pytest.mark.parametrize("device", DEVICES)
def test_user_regression_loss_passes_on_each_device(device: str) -> None:
    loss = cl.define(
        "user_wsq", "(1 + (w - 1)*y) * (p - y)**2", inputs=("p", "y"), params={"w": 3.0}
    )
    report = check_loss(loss, devices=[device], checks=[c for c in CHECKS if c != "extreme_values"])
    assert report.ok, str(report)
    assert device in report["devices"].detail


def test_params_argument_and_required_params() -> None:
    loss = cl.define("user_req", "w * (p - y)**2", inputs=("p", "y"), params={"w": None})
    report = check_loss(loss, params={"w": 2.5}, checks=["reference", "numpy_torch"])
    assert report.ok, str(report)
    with pytest.raises(TypeError, match="no param 'v'"):
        check_loss(loss, params={"v": 1.0})


# ---------------------------------------------------------------------------
# broken losses: each check can fail, and names what failed
# ---------------------------------------------------------------------------
def test_unstable_loss_fails_the_extreme_value_scan() -> None:
    loss = cl.define("tanh_ratio", "(exp(x) - exp(-x))/(exp(x) + exp(-x)) - y", inputs=("x", "y"))
    with pytest.raises(ConformanceError) as info:
        check_loss(loss)
    report = info.value.report
    assert [r.name for r in report.failures] == ["extreme_values"]
    assert "value is nan; true value" in report["extreme_values"].detail
    assert "FAIL extreme_values" in str(info.value)


def test_nan_swallowing_loss_fails_nan_propagation() -> None:
    # where(p > y, ...) with p = NaN takes the other branch: NaN silently becomes 0
    loss = cl.define("nan_eater", "where(p > y, (p - y)**2, 0)", inputs=("p", "y"))
    report = check_loss(loss, checks=["nan_propagation"], raise_on_failure=False)
    assert not report.ok
    assert "NaN prediction gave the finite loss" in report["nan_propagation"].detail


class _WrongStableForm(Loss):
    """A loss whose compiled form is not its expression (a broken stability rewrite)."""

    @property
    def stable_expr(self) -> sympy.Expr:  # type: ignore[override]
        p = self.symbols[self.inputs[0]]
        return super().stable_expr + p / 1000


class _WrongDerivative(Loss):
    """A loss whose compiled derivatives are twice the true ones."""

    def _stable_derivative(self, wrt: str) -> sympy.Expr:
        return 2 * super()._stable_derivative(wrt)


def _unique(cls: type[Loss], tag: str) -> Loss:
    # unique symbol names: the kernel cache is keyed by the mathematics, so these broken
    # losses must not share kernels with any other loss in the process
    p, y = f"p_{tag}", f"y_{tag}"
    expr = (cl.dsl.symbol(p) - cl.dsl.symbol(y)) ** 2 + cl.dsl.symbol(p) * cl.dsl.symbol("k")
    return cls(f"broken_{tag}", expr, inputs=(p, y), params={"k": 0.5})


def test_wrong_compiled_value_fails_reference_only() -> None:
    report = check_loss(_unique(_WrongStableForm, "value"), raise_on_failure=False)
    failed = {r.name for r in report.failures}
    assert "reference" in failed
    assert "vs mpmath of Loss.expr" in report["reference"].detail
    # the compiled form is self-consistent: autograd and NumPy agree with it
    for name in ("gradcheck", "numpy_torch", "reductions", "weight"):
        assert report[name].status == "passed", report[name].detail


def test_wrong_compiled_derivative_fails_gradcheck_and_reference() -> None:
    report = check_loss(_unique(_WrongDerivative, "deriv"), raise_on_failure=False)
    assert report["gradcheck"].status == "failed"
    assert "gradcheck w.r.t." in report["gradcheck"].detail
    assert report["reference"].status == "failed"
    assert report["reductions"].status == "passed"


def test_wrong_numpy_gradient_fails_numpy_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    loss = cl.define("np_grad_off", "(p - t)**2", inputs=("p", "t"))
    real = loss.gradient
    monkeypatch.setattr(loss, "gradient", lambda *a, **k: 1.01 * np.asarray(real(*a, **k)))
    report = check_loss(loss, checks=["numpy_torch"], raise_on_failure=False)
    assert "NumPy Loss.gradient(wrt='p') vs torch autograd" in report["numpy_torch"].detail


def test_half_computed_in_half_fails_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    loss = cl.define("half_policy", "log(cosh(p - y)) + sigmoid(p)*y", inputs=("p", "y"))
    assert check_loss(loss, checks=["dtypes"]).ok
    monkeypatch.setattr(torch_backend, "_HALF", ())  # compute float16 in float16
    report = check_loss(loss, checks=["dtypes"], raise_on_failure=False)
    assert "half precision must be computed in float32" in report["dtypes"].detail


def test_racy_compile_cache_fails_thread_safety(monkeypatch: pytest.MonkeyPatch) -> None:
    def racy(key: tuple, build: Any) -> Any:  # check-then-build without a lock
        hit = loss_module._ARTEFACTS.get(key)
        if hit is None:
            time.sleep(0.05)
            hit = loss_module._ARTEFACTS[key] = build()
        return hit

    loss = cl.define("racy", "(p - y)**2 * k", inputs=("p", "y"), params={"k": 2.0})
    monkeypatch.setattr(loss_module, "_cached", racy)
    report = check_loss(loss, checks=["thread_safety"], raise_on_failure=False)
    assert "the compile cache is not once-per-kernel" in report["thread_safety"].detail


def test_thread_safety_counts_one_compilation_per_kernel() -> None:
    loss = cl.define("threads_ok", "(p - y)**2 * k", inputs=("p", "y"), params={"k": 2.0})
    before = loss_module.kernel_builds
    report = check_loss(loss, checks=["thread_safety"])
    detail = report["thread_safety"].detail
    built = int(detail.split("identical results, ")[1].split(" kernel")[0])
    assert built >= 1  # a fresh copy really compiled
    assert loss_module.kernel_builds - before == 2 * built  # one copy alone, one in 8 threads


class _NoPickle(Loss):
    """A loss type without serialisation support."""

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this loss type")


def test_unpicklable_loss_fails_pickling_and_can_be_switched_off() -> None:
    base = cl.define("unpicklable", "(p - t)**2", inputs=("p", "t"))
    loss = _NoPickle(base.name, base.expr, inputs=base.inputs)
    report = check_loss(loss, checks=["pickling"], raise_on_failure=False)
    assert "pickle of the Loss failed" in report["pickling"].detail
    report = check_loss(loss, checks=["pickling"], pickling=False)
    assert report.ok and report["pickling"].status == "off"
    assert "pickling=False" in report["pickling"].detail


# ---------------------------------------------------------------------------
# the report and the arguments
# ---------------------------------------------------------------------------
def test_checks_and_skip_select_what_runs() -> None:
    loss = cl.define("select", "(p - t)**2", inputs=("p", "t"))
    report = check_loss(loss, checks=["weight", "errors"], skip=["errors"])
    assert [(r.name, r.status) for r in report.results] == [("weight", "passed"), ("errors", "off")]
    with pytest.raises(ValueError, match="unknown check 'speed'"):
        check_loss(loss, checks=["speed"])
    with pytest.raises(KeyError, match="no check 'speed'"):
        report["speed"]
    with pytest.raises(TypeError, match="needs a customloss Loss"):
        check_loss("mse")  # type: ignore[arg-type]
    assert isinstance(report, ConformanceReport)


# ---------------------------------------------------------------------------
# class-axis losses (classes=True)
# ---------------------------------------------------------------------------
def test_user_class_loss_passes_every_check() -> None:
    # weighted cross-entropy written by a user: per-class weights, required
    loss = cl.define(
        "user_wce", "-csum(w*y*log_softmax(x))", inputs=("x", "y"), params={"w": None}, classes=True
    )
    report = check_loss(loss)
    assert report.ok, str(report)
    assert [r.name for r in report.results] == list(CHECKS)
    assert "C=3" in report["reference"].detail
    assert "class-index targets (one ignored)" in report["numpy_torch"].detail
    assert "rows of C=3" in report["extreme_values"].detail


def test_naive_class_loss_fails_the_extreme_value_scan_only() -> None:
    # the cross-entropy as log(sum exp(x) / sum y exp(x)): exact in mpmath and on
    # moderate logits, inf/nan once exp(x) overflows or underflows in float32
    loss = cl.define(
        "naive_ce_kit", "log(csum(exp(x))/csum(y*exp(x)))", inputs=("x", "y"), classes=True
    )
    with pytest.raises(ConformanceError) as info:
        check_loss(loss)
    report = info.value.report
    assert [r.name for r in report.failures] == ["extreme_values"]
    detail = report["extreme_values"].detail
    assert "value is inf; true value 10000" in detail or "value is nan" in detail
    assert "stopped at max_problems" in detail  # bounded work for a broken loss


class _WrongClassDerivative(Loss):
    """A class-axis loss whose compiled derivatives are twice the true ones."""

    def _class_derivatives(self, *args: Any, **kwargs: Any) -> list:
        outs = super()._class_derivatives(*args, **kwargs)
        return [(lbl, 2 * e, shape) for lbl, e, shape in outs]


def test_wrong_class_derivative_fails_gradcheck_and_reference() -> None:
    z, y = cl.dsl.symbol("z_wcd"), cl.dsl.symbol("y_wcd")  # unique: no shared kernels
    expr = -cl.dsl.csum(y * cl.dsl.log_softmax(z))
    loss = _WrongClassDerivative("broken_class", expr, inputs=("z_wcd", "y_wcd"), classes=True)
    report = check_loss(loss, raise_on_failure=False)
    assert report["gradcheck"].status == "failed"
    assert "gradcheck w.r.t." in report["gradcheck"].detail
    assert report["reference"].status == "failed"
    assert "(torch) vs mpmath difference quotients" in report["reference"].detail
    # the values are right
    assert report["reductions"].status == "passed"
    assert report["extreme_values"].status == "passed"


def test_class_loss_errors_check_names_indices_and_class_params() -> None:
    report = check_loss(cl.get("cross_entropy"), checks=["errors"])
    assert "class index out of range" in report["errors"].detail


def test_sample_inputs_stay_in_the_domain_and_off_kinks() -> None:
    bce = cl.define("prob_bce", "-(y*log(p) + (1-y)*log(1-p))", inputs=("p", "y"))
    x, y = sample_inputs(bce, seed=3)
    assert x.shape == y.shape == (3, 4)
    assert ((x > 0) & (x < 1)).all()  # log(p), log(1-p) defined
    hinge = cl.define("my_hinge", "relu(1 - y*x)", inputs=("x", "y"))
    x, y = sample_inputs(hinge, seed=4)
    assert (np.abs(1 - x * y) > 1e-4).all()  # not on the kink
    again = sample_inputs(hinge, seed=4)
    assert np.array_equal(again[0], x)  # deterministic
    vec = cl.define("vec_w", "w*(p - y)**2", inputs=("p", "y"), params={"w": (1.0, 2.0, 3.0)})
    assert sample_inputs(vec)[0].shape == (3, 3)


def test_sample_inputs_refuses_a_nowhere_defined_loss() -> None:
    nowhere = cl.define("nowhere", "log(-1 - p**2) + y", inputs=("p", "y"))
    with pytest.raises(ValueError, match="found only 0 of 12 inputs"):
        sample_inputs(nowhere)
    report = check_loss(nowhere, raise_on_failure=False)
    assert not report.ok and "no sensible inputs" in report.failures[0].detail


# ---------------------------------------------------------------------------
# every registered loss (built-ins and installed plugins)
# ---------------------------------------------------------------------------
# Known failures, found by this kit; strict, so each turns red once fixed (remove it then).
KNOWN_FAILURES: dict[str, str] = {}


def _registered() -> list[Any]:
    out = []
    for name in cl.names():
        marks = []
        if name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, raises=ConformanceError,
                                           reason=KNOWN_FAILURES[name]))  # fmt: skip
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", _registered())
def test_registered_loss_conforms(name: str) -> None:
    check_loss(cl.get(name))


# ---------------------------------------------------------------------------
# the pytest plugin, in a fresh pytest process
# ---------------------------------------------------------------------------
def _pytest(
    tmp_path: Path, *args: str, conftest: str = "", test: str = ""
) -> subprocess.CompletedProcess[str]:
    if conftest:
        (tmp_path / "conftest.py").write_text(textwrap.dedent(conftest))
    if test:
        (tmp_path / "test_user.py").write_text(textwrap.dedent(test))
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "CUSTOMLOSS_COMPILE": "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "customloss.pytest_plugin", "-p", "no:cacheprovider",
         "-q", "-rA", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_plugin_adds_a_conformance_test_per_registered_loss(tmp_path: Path) -> None:
    # one pytest run: a conforming built-in and a broken loss registered by a conftest
    conftest = """
        import customloss as cl
        cl.register(cl.define("mae_zz_broken", "(exp(x) - exp(-x))/(exp(x) + exp(-x)) - y",
                              inputs=("x", "y")))
    """
    proc = _pytest(tmp_path, "--customloss-conformance", "--customloss-pattern=ma*",
                   "--customloss-skip=pickling", conftest=conftest)  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "PASSED customloss-conformance[mae]" in proc.stdout
    assert "FAILED customloss-conformance[mae_zz_broken]" in proc.stdout
    assert "FAIL extreme_values" in proc.stdout  # the report, not a traceback
    assert "OFF  pickling" in proc.stdout
    assert "1 failed, 1 passed" in proc.stdout


def test_plugin_parametrises_the_fixture(tmp_path: Path) -> None:
    test = """
        def test_each(customloss_name, registered_loss):
            assert registered_loss.name == customloss_name
    """
    proc = _pytest(tmp_path, "--customloss-pattern=*l1*", test=test)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "test_each[smooth_l1]" in proc.stdout
    assert "customloss-conformance" not in proc.stdout  # nothing added unless asked


def test_plugin_without_registry_says_so(tmp_path: Path) -> None:
    conftest = """
        import customloss
        del customloss.names
    """
    proc = _pytest(tmp_path, "--customloss-conformance", conftest=conftest)
    assert proc.returncode != 0
    assert "has no loss registry (customloss.names() is missing)" in proc.stdout + proc.stderr


def test_conformance_items_obey_keyword_and_deselect(tmp_path: Path) -> None:
    # the items were appended after pytest had applied -k/-m/--deselect: all ran
    proc = _pytest(
        tmp_path,
        "--customloss-conformance",
        "--customloss-pattern=m*",
        "-k",
        "msle or mae",
        "--deselect",
        "customloss-conformance[mae]",
        "--co",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "customloss-conformance[msle]" in proc.stdout
    assert "customloss-conformance[mae]" not in proc.stdout
    assert "customloss-conformance[mse]" not in proc.stdout


def test_check_loss_takes_numpy_vector_params() -> None:
    counts = np.array([1.0, 5.0, 50.0, 500.0])
    report = check_loss(
        cl.get("class_balanced"),
        params={"counts": counts},
        skip=["gradgradcheck", "extreme_values", "thread_safety", "pickling"],
    )
    assert report.ok
    assert "C=4 classes" in str(report)
