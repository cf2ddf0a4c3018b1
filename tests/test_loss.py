"""The Loss object, the decorator and define(): the public contract of issue 3."""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading

import numpy as np
import pytest
import sympy

import customloss as cl

# `customloss.loss` is the decorator; the module is reached by its full name
loss_module = importlib.import_module("customloss.loss")


@cl.loss(params={"w_pos": 3.0})
def weighted_sq(p, y, w_pos):
    """Positives weigh w_pos times more."""
    return (1 + (w_pos - 1) * y) * (p - y) ** 2


ACC = cl.define("acc_sq", "(p - y)**2 * (1 + k*y)", inputs=("p", "y"), params={"k": 2.0})


def test_decorator_builds_loss():
    assert isinstance(weighted_sq, cl.Loss)
    assert weighted_sq.name == "weighted_sq"
    assert weighted_sq.inputs == ("p", "y")
    assert weighted_sq.params == {"w_pos": 3.0}
    assert weighted_sq.doc == "Positives weigh w_pos times more."
    p, y, w = sympy.symbols("p y w_pos", real=True)
    assert sympy.simplify(weighted_sq.expr - (1 + (w - 1) * y) * (p - y) ** 2) == 0


def test_define_builds_the_same_mathematics_as_the_decorator():
    @cl.loss("acc_sq", params={"k": 2.0})
    def acc(p, y, k):
        return (p - y) ** 2 * (1 + k * y)

    assert ACC.expr == acc.expr
    assert ACC.params == acc.params == {"k": 2.0}


def test_grad_free_symbols_named_after_inputs_and_params():
    for wrt in (None, "p", "y", "w_pos"):
        gexpr = weighted_sq.grad(wrt)
        names = [s.name for s in gexpr.free_symbols]
        assert len(names) == len(set(names))
        assert set(names) <= {"p", "y", "w_pos"}


@pytest.mark.parametrize(
    ("wrt", "closed_form"),
    [
        ("p", lambda p, y, w: 2 * (p - y) * (1 + (w - 1) * y)),
        ("y", lambda p, y, w: (w - 1) * (p - y) ** 2 - 2 * (p - y) * (1 + (w - 1) * y)),
        ("w_pos", lambda p, y, w: y * (p - y) ** 2),
    ],
)
def test_grad_lambdifies_with_math_and_matches_hand_derivation(wrt, closed_form):
    gexpr = weighted_sq.grad(wrt)
    syms = sorted(gexpr.free_symbols, key=lambda s: s.name)
    f = sympy.lambdify(syms, gexpr, "math")
    vals = {"p": 0.3, "y": 1.0, "w_pos": 2.5}
    got = f(*[vals[s.name] for s in syms])
    assert got == pytest.approx(closed_form(0.3, 1.0, 2.5))


def test_second_derivative():
    assert (
        sympy.simplify(
            weighted_sq.grad("p", order=2)
            - 2 * (1 + (weighted_sq.symbols["w_pos"] - 1) * weighted_sq.symbols["y"])
        )
        == 0
    )


def test_grad_wrt_symbol_object_and_unknown():
    assert weighted_sq.grad(weighted_sq.symbols["y"]) == weighted_sq.grad("y")
    with pytest.raises(ValueError, match="no symbol 'q'"):
        weighted_sq.grad("q")


def test_latex_and_source():
    assert "w_{pos}" in weighted_sq.latex()
    assert "w_{pos}" in weighted_sq.grad_latex()
    src = weighted_sq.source()
    assert "def weighted_sq_torch_value" in src
    assert "def weighted_sq_numpy_value" in weighted_sq.source("numpy")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        weighted_sq.source("jax")


def test_naive_log_sigmoid_source_uses_stable_function():
    bce = cl.define("b", "-(y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x)))", inputs=("x", "y"))
    src = bce.source()
    assert "softplus" in src and "R.exp" not in src and "R.log(" not in src


def test_argument_neither_input_nor_param_is_named():
    with pytest.raises(
        TypeError, match="argument 'gamma' is neither an input nor a declared param"
    ):

        @cl.loss()
        def bad(p, y, gamma):
            return (p - y) ** gamma


def test_param_not_an_argument():
    with pytest.raises(TypeError, match="param 'k' is not an argument"):

        @cl.loss(params={"k": 1.0})
        def bad(p, y):
            return p - y


def test_decorator_needs_sympy_result_and_two_args():
    with pytest.raises(TypeError, match="SymPy expression"):

        @cl.loss()
        def bad(p, y):
            return "p"

    with pytest.raises(TypeError, match="at least two"):

        @cl.loss()
        def bad2(p):
            return p

    with pytest.raises(TypeError, match="parentheses"):

        @cl.loss
        def bad3(p, y):
            return p


def test_define_errors():
    with pytest.raises(ValueError, match="unknown symbol 'yy'"):
        cl.define("x", "(p - yy)**2", inputs=("p", "y"))
    with pytest.raises(ValueError, match="exactly two inputs"):
        cl.define("x", "p", inputs=("p",))
    with pytest.raises(ValueError, match="clashes with the DSL function"):
        cl.define("x", "(log - y)", inputs=("log", "y"))
    with pytest.raises(ValueError, match="not a valid identifier"):
        cl.define("x", "p", inputs=("p", "class"))
    with pytest.raises(ValueError, match="loss name"):
        cl.define("bad name", "p", inputs=("p", "y"))
    with pytest.raises(TypeError, match="param 'k'"):
        cl.define("x", "p*k", inputs=("p", "y"), params={"k": "big"})


def test_required_param_and_unknown_override_errors():
    need = cl.define("need", "(p - y)**2 * k", inputs=("p", "y"), params={"k": None})
    with pytest.raises(TypeError, match="missing required param.*'k'"):
        need(np.ones(3), np.zeros(3))
    assert float(need(np.ones(3), np.zeros(3), k=2.0)) == pytest.approx(2.0)
    with pytest.raises(TypeError, match="unknown param 'kk'.*valid params: k"):
        need(np.ones(3), np.zeros(3), k=1.0, kk=2.0)


def test_unknown_reduction_lists_valid_ones():
    with pytest.raises(ValueError, match="'mean', 'sum', 'none'"):
        ACC(np.ones(2), np.ones(2), reduction="avg")


def test_with_defaults_returns_new_loss():
    other = ACC.with_defaults(k=5.0)
    assert other.params == {"k": 5.0} and ACC.params == {"k": 2.0}
    assert float(other(np.array([1.0]), np.array([0.0]))) == pytest.approx(1.0)
    assert float(other(np.array([0.0]), np.array([1.0]))) == pytest.approx(6.0)
    with pytest.raises(TypeError, match="unknown param 'q'"):
        ACC.with_defaults(q=1.0)


def test_pretty_shows_loss_and_gradient():
    text = weighted_sq.pretty()
    assert "weighted_sq(p, y; w_pos)" in text and "dweighted_sq/dp" in text


def test_compile_cache_is_thread_safe_and_compiles_once():
    fresh = cl.define(
        "fresh_thread_loss", "(p - y)**4 * k + p*y", inputs=("p", "y"), params={"k": 0.5}
    )
    before = loss_module.kernel_builds
    x = np.linspace(-1, 1, 101)
    t = np.cos(x)
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        results[i] = fresh(x, t, reduction="none")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert loss_module.kernel_builds - before == 1
    ref = (x - t) ** 4 * 0.5 + x * t
    for r in results:
        np.testing.assert_allclose(r, ref, rtol=1e-12)


def test_same_mathematics_shares_kernels():
    a = cl.define("share_a", "(p - y)**6 + 3*k", inputs=("p", "y"), params={"k": 0.5})
    a(np.ones(2), np.zeros(2))
    before = loss_module.kernel_builds
    b = cl.define("share_b", "(p - y)**6 + 3*k", inputs=("p", "y"), params={"k": 9.0})
    assert float(b(np.ones(2), np.zeros(2))) == pytest.approx(28.0)
    assert loss_module.kernel_builds == before


def test_import_does_not_import_torch():
    code = "import sys, customloss; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("name", "param", "bad", "call_torch"),
    [
        # torch refuses the same values in its own built-ins
        ("huber", "delta", 0.0, lambda F, x, y, v: F.huber_loss(x, y, delta=v)),
        ("huber", "delta", -1.0, lambda F, x, y, v: F.huber_loss(x, y, delta=v)),
        ("smooth_l1", "beta", -0.5, lambda F, x, y, v: F.smooth_l1_loss(x, y, beta=v)),
        (
            "cross_entropy",
            "label_smoothing",
            1.5,
            lambda F, x, y, v: F.cross_entropy(x, y.long(), label_smoothing=v),
        ),
    ],
)
def test_param_domains_refuse_what_torch_refuses(name, param, bad, call_torch):
    import torch
    import torch.nn.functional as F

    loss = cl.get(name)
    if loss.classes:
        x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    else:
        x, y = torch.randn(4), torch.randn(4)
    with pytest.raises(RuntimeError):
        call_torch(F, x, y.float() if not loss.classes else y, bad)
    pattern = rf"loss {name!r}: param {param!r} must be"
    with pytest.raises(ValueError, match=pattern):
        loss(x, y, **{param: bad})
    with pytest.raises(ValueError, match=pattern):
        loss(x.numpy(), y.numpy(), **{param: bad})
    with pytest.raises(ValueError, match=pattern):
        loss.with_defaults(**{param: bad})
    with pytest.raises(ValueError, match=pattern):
        loss.torch(**{param: bad})
    with pytest.raises(ValueError, match=pattern):
        loss.gradient(x.numpy(), y.numpy(), **{param: bad})
    # the edge of the domain is allowed and equals torch there
    edge = {"delta": 1e-3, "beta": 0.0, "label_smoothing": 1.0}[param]
    ref = call_torch(F, x.double(), y.double() if not loss.classes else y, edge)
    assert float(loss(x.double(), y, **{param: edge})) == pytest.approx(float(ref), rel=1e-12)


def test_negative_label_smoothing_is_refused_where_torch_silently_ignores_it():
    # pytorch/pytorch#134767: F.cross_entropy computes label_smoothing < 0 as 0
    import torch
    import torch.nn.functional as F

    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    assert float(F.cross_entropy(x, y, label_smoothing=-0.1)) == float(F.cross_entropy(x, y))
    with pytest.raises(ValueError, match=r"param 'label_smoothing' must be in \[0, 1\]"):
        cl.get("cross_entropy")(x, y, label_smoothing=-0.1)


def test_param_domain_of_class_counts_and_beta():
    import torch

    cb = cl.get("class_balanced")
    z, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match=r"param 'counts' must be > 0; found 0.0 \(1 of 4"):
        cb(z, y, counts=[10, 0, 3, 4])
    with pytest.raises(ValueError, match=r"param 'counts' must be > 0"):
        cb(z, y, counts=np.array([10.0, -1.0, 3.0, 4.0]))
    # tensors are read only on request (a GPU tensor would synchronise the device)
    counts = torch.tensor([10.0, 0.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"param 'counts' must be > 0"):
        cb(z, y, counts=counts, validate=True)
    with pytest.raises(ValueError, match=r"param 'beta' must be in \[0, 1\); found 1.0"):
        cl.get("class_balanced", beta=1.0)
    # beta = 0 is inside: every class weighs the same, so the loss is cross-entropy
    ref = torch.nn.functional.cross_entropy(z, y)
    got = cb(z, y, counts=[10, 1, 3, 4], beta=0.0)
    assert float(got) == pytest.approx(float(ref), rel=1e-12)
    with pytest.raises(ValueError, match=r"param 'counts' must be > 0"):
        cl.get("ldam")(z, y, counts=[1, 2, 0, 4])
    with pytest.raises(ValueError, match=r"param 'gamma' must be >= 0; found -1.0"):
        cl.get("focal")(np.zeros(2), np.ones(2), gamma=-1)


def test_declared_param_domains_intervals_and_errors():
    k_loss = cl.define(
        "k_dom", "k*(x - y)**2", inputs=("x", "y"), params={"k": 1.0}, domains={"k": "(0, 2]"}
    )
    x, y = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    assert float(k_loss(x, y, k=2.0)) == pytest.approx(2.0 * (1 + 4) / 2)
    for bad in (0.0, 2.5, -np.inf):
        with pytest.raises(ValueError, match=r"param 'k' must be in \(0, 2\]"):
            k_loss(x, y, k=bad)
    assert np.isnan(float(k_loss(x, y, k=np.nan)))  # NaN propagates, as for inputs
    with pytest.raises(ValueError, match=r"param 'k' must be in \(0, 2\]; found 3.0"):
        cl.define("k_dom2", "k*x", inputs=("x", "y"), params={"k": 3.0}, domains={"k": "(0, 2]"})
    with pytest.raises(ValueError, match=r"domain of 'k': unknown domain '\(0, 2'"):
        cl.define("k_dom3", "k*x", inputs=("x", "y"), params={"k": 1.0}, domains={"k": "(0, 2"})
    with pytest.raises(ValueError, match=r"domain of 'k': unknown domain '\[2, 1\]'"):
        cl.define("k_dom4", "k*x", inputs=("x", "y"), params={"k": 1.0}, domains={"k": "[2, 1]"})
    with pytest.raises(ValueError, match="domains names 'z', which is not an input or a param"):
        cl.define("k_dom5", "k*x", inputs=("x", "y"), params={"k": 1.0}, domains={"z": "positive"})
    rebuilt = cl.get(k_loss.to_config())
    assert rebuilt.domains == {"k": "(0, 2]"}
    with pytest.raises(ValueError, match=r"param 'k' must be in \(0, 2\]"):
        rebuilt(x, y, k=5.0)
    import pickle

    with pytest.raises(ValueError, match=r"param 'k' must be in \(0, 2\]"):
        pickle.loads(pickle.dumps(k_loss))(x, y, k=5.0)


def test_param_domains_check_integers_half_tensors_inf_and_fractions():
    # (found by the session-6 review of the domain checks)
    import fractions

    import torch
    import torch.nn.functional as F

    x, y = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    quantile = cl.get("quantile")
    # an integer outside [0, 1] is refused like the float (it skipped the check)
    for bad in (2, [0, 3], np.int64(5)):
        with pytest.raises(ValueError, match=r"param 'q' must be in \[0, 1\]"):
            quantile(x, y, q=bad)
    with pytest.raises(ValueError, match=r"param 'q' must be in \[0, 1\]"):
        quantile.torch(q=3)
    z, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(RuntimeError):
        F.cross_entropy(z, t, label_smoothing=2)
    with pytest.raises(ValueError, match=r"param 'label_smoothing' must be in \[0, 1\]"):
        cl.get("cross_entropy")(z, t, label_smoothing=2)
    # an integer target of an elementwise loss is a value, not a class index
    with pytest.raises(ValueError, match=r"target 'y' must be in \[0, 1\]; found 5.0"):
        cl.get("bce")(torch.tensor([0.2, 0.7]), torch.tensor([0, 5]), validate=True)
    # class indices of a class-axis loss are still exempt (checked against C elsewhere)
    got = cl.get("categorical_crossentropy")(torch.softmax(z, 1), t, validate=True)
    assert float(got) == pytest.approx(float(F.nll_loss(torch.log_softmax(z, 1), t)), rel=1e-6)
    # bfloat16/float16 tensors are checked (NumPy has no bfloat16), meta ones skipped
    for dt in (torch.bfloat16, torch.float16):
        crit = cl.get("focal").torch(gamma=torch.nn.Parameter(torch.tensor(2.0, dtype=dt)))
        assert isinstance(crit.gamma, torch.nn.Parameter)
        with pytest.raises(ValueError, match="param 'gamma' must be >= 0; found -1.0"):
            cl.get("focal").torch(gamma=torch.tensor(-1.0, dtype=dt))
    cl.get("focal").torch(gamma=torch.tensor(2.0, device="meta"))
    # +inf is >= 0 and > 0; torch accepts delta = inf (then huber is 0.5 * MSE)
    for name, kw, ref in (
        ("huber", {"delta": np.inf}, F.huber_loss(x, y, delta=float("inf"))),
        ("smooth_l1", {"beta": np.inf}, F.smooth_l1_loss(x, y, beta=float("inf"))),
    ):
        assert float(cl.get(name)(x, y, **kw)) == pytest.approx(float(ref), rel=1e-12)
    assert float(F.huber_loss(x, y, delta=float("inf"))) == pytest.approx(
        float(0.5 * ((x - y) ** 2).mean()), rel=1e-12
    )
    poisson_target = cl.define(
        "nonneg_t", "(x - y)**2", inputs=("x", "y"), domains={"y": "nonnegative"}
    )
    poisson_target(np.zeros(2), np.array([1.0, np.inf]), validate=True)
    # a Fraction is a real number (as for torch's own scalar arguments)
    got = cl.get("huber")(x, y, delta=fractions.Fraction(3, 2))
    assert float(got) == pytest.approx(float(F.huber_loss(x, y, delta=1.5)), rel=1e-12)
    with pytest.raises(ValueError, match=r"param 'delta' must be > 0"):
        cl.get("huber")(x, y, delta=fractions.Fraction(-1, 2))


def test_check_scans_only_params_inside_their_domain():
    from customloss import check

    ce = cl.get("cross_entropy")
    sets = check._param_sets(ce, None)
    assert {s["label_smoothing"] for s in sets} == {0.0, 0.25, 0.5, 1.0}
    with pytest.raises(ValueError, match=r"values of param 'label_smoothing' must be in \[0, 1\]"):
        check._param_sets(ce, {"label_smoothing": [0.5, 2.0]})


def test_import_is_cheap_and_defers_sympy():
    code = "import sys, customloss; print('sympy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    code = "import customloss as cl; print(cl.define('q', '(p - y)**2', inputs=('p', 'y')).grad())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2*p - 2*y"


def test_validate_checks_declared_domains_before_any_work():
    import torch

    hinge = cl.define("h_dom", "maximum(0, 1 - x*y)", inputs=("x", "y"), domains={"y": "sign"})
    x = np.array([0.5, -2.0])
    assert float(hinge(x, np.array([1.0, -1.0]), validate=True)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"target 'y' must be in \{-1, \+1\}; found 0.0"):
        hinge(x, np.array([1.0, 0.0]), validate=True)
    assert float(hinge(x, np.array([1.0, 0.0]))) == pytest.approx((0.5 + 1.0) / 2)  # opt-in
    prob = cl.define(
        "p_dom", "(p - y)**2", inputs=("p", "y"), domains={"p": "probability", "y": "binary"}
    )
    with pytest.raises(ValueError, match=r"input 'p' must be in \[0, 1\]; found 1.5"):
        prob(torch.tensor([1.5, 0.2]), torch.tensor([1.0, 0.0]), validate=True)
    with pytest.raises(ValueError, match=r"target 'y' must be in \{0, 1\}"):
        prob(torch.tensor([0.5, 0.2]), torch.tensor([1.0, 0.5]), validate=True)
    nan_ok = prob(np.array([np.nan, 0.2]), np.array([1.0, 0.0]), validate=True, reduction="none")
    assert np.isnan(nan_ok[0])  # NaN propagates; it is not a domain error
    with pytest.raises(ValueError, match="unknown domain 'positive_definite'"):
        cl.define("bad_dom", "p", inputs=("p", "y"), domains={"p": "positive_definite"})
    assert cl.get("hinge").domains == {"y": "sign"}
    assert cl.get(prob.to_config()).domains == prob.domains
