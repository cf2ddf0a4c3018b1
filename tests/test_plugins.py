"""Tests for the plugin distributions under plugins/ and for plugin discovery.

* The distributions are installed in the test environment (``make test`` installs every
  ``plugins/*/``); a fresh interpreter finds their losses through the ``customloss``
  entry point and computes correct values.
* A deliberately broken distribution, built here at run time (never under plugins/, which
  the Makefile installs), warns and does not block the others; strict mode and
  ``CUSTOMLOSS_DISABLE_PLUGINS`` work on real entry points.
* customloss-robust is checked against the closed forms of Barron (2019); its limits are
  re-derived with ``sympy.limit`` and its gradients checked by finite differences.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy
import torch

import customloss as cl
from customloss.registry import DISABLE_ENV, STRICT_ENV

REPO = Path(__file__).resolve().parents[1]
DT = torch.float64
INF = math.inf

#: Each distribution under plugins/ -> its entry points in the customloss group.
DISTRIBUTIONS = {
    "customloss-robust": {"robust": "customloss_robust"},
    "customloss-example": {"example": "customloss_example"},
}
ROBUST = ["cauchy", "charbonnier", "geman_mcclure", "general_robust", "welsch"]
EXAMPLE = ["msle", "weighted_sq"]


def run_python(code: str, *, pythonpath: Path | None = None, **env: str):
    environment = {k: v for k, v in os.environ.items() if k not in (STRICT_ENV, DISABLE_ENV)}
    environment.update(env)
    if pythonpath is not None:
        environment["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


# ------------------------------------------------------------ installed distributions
def test_every_plugin_directory_is_a_known_distribution():
    dirs = sorted(p.parent.name for p in REPO.glob("plugins/*/pyproject.toml"))
    assert dirs == sorted(DISTRIBUTIONS)


@pytest.mark.parametrize("dist_name", sorted(DISTRIBUTIONS))
def test_plugin_distribution_is_installed_from_this_checkout(dist_name):
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{dist_name} is not installed; run `make install` (it installs plugins/*/)")
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "customloss"}
    assert eps == DISTRIBUTIONS[dist_name]
    assert "customloss" in " ".join(dist.requires or [])
    module = __import__(next(iter(eps.values())))
    source = Path(module.__file__).resolve()
    assert source.is_relative_to(REPO / "plugins" / dist_name), (
        f"{dist_name} is imported from {source}, not from this checkout; "
        f"reinstall it with pip install --no-deps -e plugins/{dist_name}"
    )


def test_fresh_interpreter_discovers_the_plugins_through_entry_points():
    result = run_python(
        """
        import json, sys, warnings
        import numpy as np
        warnings.simplefilter("error")  # any PluginLoadWarning fails this test
        import customloss as cl
        assert "customloss_robust" not in sys.modules  # lazily, on first use
        x = np.array([-3.0, -0.5, 0.0, 0.25, 2.0, 10.0])
        out = {
            "names": cl.names(),
            "info": {n: [cl.info(n).plugin, cl.info(n).distribution, cl.info(n).version]
                     for n in ("general_robust", "welsch", "msle", "focal")},
            "values": {
                "cauchy": cl.get("cauchy", c=2.0)(x, 0 * x, reduction="none").tolist(),
                "general_robust": cl.get("general_robust")(x, 0 * x, reduction="none").tolist(),
                "welsch": cl.get("welsch")(x, 0 * x, reduction="none").tolist(),
                "msle": cl.get("msle")(np.abs(x), 0 * x, reduction="none").tolist(),
                "weighted_sq": float(cl.get("weighted_sq")(np.array([0.5]), np.array([1.0]))),
            },
        }
        print(json.dumps(out))
        """
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(ROBUST + EXAMPLE) <= set(out["names"])
    assert out["info"]["general_robust"] == ["robust", "customloss-robust", "0.1.0"]
    assert out["info"]["welsch"] == ["robust", "customloss-robust", "0.1.0"]
    assert out["info"]["msle"] == ["example", "customloss-example", "0.1.0"]
    assert out["info"]["focal"] == ["builtin", "customloss", cl.__version__]
    x = np.array([-3.0, -0.5, 0.0, 0.25, 2.0, 10.0])
    values = out["values"]
    np.testing.assert_allclose(values["cauchy"], np.log(0.5 * (x / 2) ** 2 + 1), rtol=1e-14)
    np.testing.assert_allclose(values["general_robust"], np.sqrt(x**2 + 1) - 1, rtol=1e-13)
    np.testing.assert_allclose(values["welsch"], 1 - np.exp(-0.5 * x**2), rtol=1e-14)
    np.testing.assert_allclose(values["msle"], np.log1p(np.abs(x)) ** 2, rtol=1e-14)
    assert values["weighted_sq"] == pytest.approx(3.0 * 0.25)  # w_pos * (p - y)^2


# ----------------------------------------------------------------- a broken plugin
def _write_distribution(site: Path) -> None:
    """A distribution with two broken plugins and a good one loaded after them."""
    info = site / "customloss_broken-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: customloss-broken\nVersion: 0.0.1\n"
        "Requires-Dist: customloss\n"
    )
    (info / "entry_points.txt").write_text(
        "[customloss]\n"
        "broken_import = customloss_broken_import\n"
        "broken_hook = customloss_broken_hook\n"
        "zz_good = customloss_zz_good\n"
    )
    (site / "customloss_broken_import.py").write_text(
        "raise ImportError('customloss_broken_import needs missing_dependency')\n"
    )
    (site / "customloss_broken_hook.py").write_text(
        textwrap.dedent(
            """
            import customloss as cl

            @cl.hookimpl
            def register_losses(register):
                register(cl.define("half_registered", "(p - y)**2", inputs=("p", "y")))
                raise RuntimeError("the hook failed after registering one loss")
            """
        )
    )
    (site / "customloss_zz_good.py").write_text(
        textwrap.dedent(
            """
            import customloss as cl

            @cl.hookimpl
            def register_losses(register):
                register(cl.define("zz_cube", "abs(p - y)**3", inputs=("p", "y")))
            """
        )
    )


LIST_NAMES = """
    import customloss as cl
    print(" ".join(cl.names()))
"""


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    _write_distribution(site)
    return site


def test_a_broken_plugin_warns_and_does_not_block_the_others(broken_site):
    result = run_python(LIST_NAMES, pythonpath=broken_site)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    # every other plugin loaded: built-ins, both installed distributions, and the good
    # plugin of the broken distribution, which loads after the broken ones
    assert {"focal", "mse", *ROBUST, *EXAMPLE, "zz_cube"} <= set(names)
    assert "half_registered" not in names  # the failing hook's losses are rolled back
    warnings_ = [line for line in result.stderr.splitlines() if "PluginLoadWarning" in line]
    assert len(warnings_) == 2, result.stderr
    hook, imp = sorted(warnings_)  # 'broken_hook' < 'broken_import'
    for line, name in ((imp, "broken_import"), (hook, "broken_hook")):
        assert f"customloss plugin '{name}'" in line
        assert f"entry point '{name} = customloss_{name}' in group 'customloss'" in line
        assert "distribution customloss-broken 0.0.1" in line
    assert "ImportError: customloss_broken_import needs missing_dependency" in imp
    assert "RuntimeError: the hook failed after registering one loss" in hook


def test_strict_mode_makes_a_broken_plugin_an_error(broken_site):
    result = run_python(LIST_NAMES, pythonpath=broken_site, **{STRICT_ENV: "1"})
    assert result.returncode != 0
    assert "PluginLoadError: customloss plugin 'broken_hook'" in result.stderr
    assert "RuntimeError: the hook failed" in result.stderr


def test_disabled_plugins_are_skipped_silently(broken_site):
    result = run_python(
        "import warnings\nwarnings.simplefilter('error')\n" + textwrap.dedent(LIST_NAMES),
        pythonpath=broken_site,
        **{DISABLE_ENV: "broken_import,broken_hook,example"},
    )
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    assert {"focal", *ROBUST, "zz_cube"} <= names
    assert not names & set(EXAMPLE)


# ------------------------------------------------------------------ customloss-robust
def rho_barron(x, alpha, c):
    """Barron (2019) eq. 1, written directly in torch (autograd gives its gradient)."""
    b = torch.abs(alpha - 2)
    return b / alpha * (((x / c) ** 2 / b + 1) ** (alpha / 2) - 1)


def rho_mp(x: float, alpha, c: float) -> mpmath.mpf:
    """Barron (2019) eq. 1 in arbitrary precision (``mpmath.mp.dps`` digits)."""
    x, alpha, c = mpmath.mpf(x), mpmath.mpf(alpha), mpmath.mpf(c)
    b = abs(alpha - 2)
    return b / alpha * (((x / c) ** 2 / b + 1) ** (alpha / 2) - 1)


# Barron (2019), Sec. 2 and eq. 8: the special cases, on u = (x/c)^2
SPECIAL = {
    2.0: ("L2", lambda u: u / 2),
    1.0: ("Charbonnier", lambda u: torch.sqrt(u + 1) - 1),
    0.0: ("Cauchy", lambda u: torch.log(u / 2 + 1)),
    -2.0: ("Geman-McClure", lambda u: 2 * u / (u + 4)),
    -INF: ("Welsch", lambda u: 1 - torch.exp(-u / 2)),
    INF: ("exp", lambda u: torch.exp(u / 2) - 1),
}
NAMED = {
    "cauchy": SPECIAL[0.0][1],
    "charbonnier": SPECIAL[1.0][1],
    "geman_mcclure": SPECIAL[-2.0][1],
    "welsch": SPECIAL[-INF][1],
}


def residuals(n: int = 41) -> torch.Tensor:
    return torch.linspace(-6, 6, n, dtype=DT)


def x_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("alpha", [-8.0, -2.0, -0.5, 0.5, 1.0, 1.5, 3.0, 6.0])
@pytest.mark.parametrize("c", [0.5, 1.0, 2.5])
def test_general_robust_matches_the_general_formula(alpha, c):
    loss = cl.get("general_robust")
    x = residuals()
    ours = x_and_grad(lambda t: loss(t, torch.zeros_like(t), reduction="none", alpha=alpha, c=c), x)
    ref = x_and_grad(lambda t: rho_barron(t, torch.tensor(alpha, dtype=DT), c), x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("alpha", sorted(SPECIAL), ids=[v[0] for _, v in sorted(SPECIAL.items())])
@pytest.mark.parametrize("c", [0.5, 2.0])
def test_general_robust_special_cases_match_the_papers_closed_forms(alpha, c):
    _, closed = SPECIAL[alpha]
    loss = cl.get("general_robust")
    x = residuals()
    ours = x_and_grad(lambda t: loss(t, torch.zeros_like(t), reduction="none", alpha=alpha, c=c), x)
    ref = x_and_grad(lambda t: closed((t / c) ** 2), x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("c", [0.3, 1.0, 4.0])
def test_named_robust_losses_match_their_closed_forms(name, c):
    loss = cl.get(name, c=c)
    x = residuals()
    y = torch.full_like(x, 0.75)
    ours = x_and_grad(lambda t: loss(t, y, reduction="none"), x)
    ref = x_and_grad(lambda t: NAMED[name](((t - y) / c) ** 2), x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-15)
    # the learnable scale gets the closed form's gradient too
    ct = torch.tensor(c, dtype=DT, requires_grad=True)
    (ours_c,) = torch.autograd.grad(cl.get(name)(x, y, c=ct), ct)
    ct2 = torch.tensor(c, dtype=DT, requires_grad=True)
    (ref_c,) = torch.autograd.grad(NAMED[name](((x - y) / ct2) ** 2).mean(), ct2)
    torch.testing.assert_close(ours_c, ref_c, rtol=1e-10, atol=1e-15)


def test_the_limit_branches_are_the_symbolic_limits():
    a = sympy.Symbol("alpha", real=True)
    u = sympy.Symbol("u", positive=True)
    below_2 = (2 - a) / a * ((u / (2 - a) + 1) ** (a / 2) - 1)  # |a - 2| = 2 - a
    above_2 = (a - 2) / a * ((u / (a - 2) + 1) ** (a / 2) - 1)
    assert sympy.simplify(sympy.limit(below_2, a, 0) - sympy.log(u / 2 + 1)) == 0
    assert sympy.simplify(sympy.limit(below_2, a, 2, "-") - u / 2) == 0
    assert sympy.simplify(sympy.limit(above_2, a, 2, "+") - u / 2) == 0
    assert sympy.simplify(sympy.limit(below_2, a, -sympy.oo) - (1 - sympy.exp(-u / 2))) == 0
    assert sympy.simplify(sympy.limit(above_2, a, sympy.oo) - (sympy.exp(u / 2) - 1)) == 0


@pytest.mark.parametrize("alpha", [1e-9, -1e-9, 2 - 1e-9, 2 + 1e-9, -1e6, -1e12, 1e3])
def test_general_robust_is_accurate_next_to_the_singular_alphas(alpha):
    # The naive formula loses ~|log10 alpha| digits near alpha = 0; ours uses
    # expm1/log1p and must stay within 1e-12 of a 60-digit evaluation.
    mpmath.mp.dps = 60
    x = residuals(13)
    c = 1.7
    value = cl.get("general_robust")(x, torch.zeros_like(x), reduction="none", alpha=alpha, c=c)
    exact = torch.tensor([float(rho_mp(v, alpha, c)) for v in x.tolist()], dtype=DT)
    torch.testing.assert_close(value, exact, rtol=1e-12 if abs(alpha) < 1e5 else 1e-9, atol=1e-300)


def test_general_robust_is_monotonic_in_alpha():
    # Barron (2019), Sec. 2: rho is monotonic in alpha; this also checks that the
    # limit branches join the general formula in the right order.
    alphas = [-INF, -1e8, -16.0, -2.0, -1e-7, 0.0, 1e-7, 0.5, 1.0, 2 - 1e-7, 2.0, 2 + 1e-7, 4.0]
    x = residuals(25)
    loss = cl.get("general_robust")
    rows = torch.stack(
        [loss(x, torch.zeros_like(x), reduction="none", alpha=a, c=0.8) for a in alphas]
    )
    assert (rows[1:] - rows[:-1] >= -1e-12).all()
    # and the limits are approached continuously
    torch.testing.assert_close(rows[4], rows[5], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(rows[9], rows[10], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(rows[1], rows[0], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("alpha", [-3.0, 0.5, 1.0, 3.0])
def test_general_robust_gradcheck_with_learnable_alpha_and_scale(alpha):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, generator=g, dtype=DT, requires_grad=True)
    y = torch.randn(8, generator=g, dtype=DT)
    a = torch.tensor(alpha, dtype=DT, requires_grad=True)
    c = torch.tensor(0.7, dtype=DT, requires_grad=True)
    loss = cl.get("general_robust")
    assert torch.autograd.gradcheck(
        lambda x_, a_, c_: loss(x_, y, reduction="none", alpha=a_, c=c_), (x, a, c)
    )


def test_general_robust_alpha_gradient_at_the_singular_values():
    x = torch.tensor([-2.0, 0.3, 1.0, 4.0], dtype=DT)
    c = 1.3
    loss = cl.get("general_robust")
    mpmath.mp.dps = 120
    h = mpmath.mpf("1e-40")

    def alpha_grad(alpha):
        a = torch.tensor(alpha, dtype=DT, requires_grad=True)
        return torch.autograd.grad(loss(x, torch.zeros_like(x), reduction="sum", alpha=a, c=c), a)[
            0
        ]

    # alpha = 0: the true derivative (central difference at 120 digits)
    exact = sum((rho_mp(v, h, c) - rho_mp(v, -h, c)) / (2 * h) for v in x.tolist())
    assert alpha_grad(0.0).item() == pytest.approx(float(exact), rel=1e-12)
    # alpha = -inf: rho no longer depends on alpha
    assert alpha_grad(-INF).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_general_robust_limits_select_correctly_in_every_precision(dtype):
    # The +-inf branches are selected by alpha <= -1e300 / >= 1e300, which float32
    # rounds to -inf/+inf: check the infinities (and a finite alpha) in both backends.
    x64 = residuals(9)
    loss = cl.get("general_robust")
    for alpha in (-INF, INF, 0.0, 2.0, -1e30):
        # alpha = -1e30 is finite in float32 too, and within 1e-30 of the Welsch limit
        expected = SPECIAL[alpha if alpha in SPECIAL else -INF][1](x64**2)
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
        x = x64.to(dtype)
        value = loss(x, torch.zeros_like(x), reduction="none", alpha=alpha)
        torch.testing.assert_close(value.double(), expected, **tol)
        value_np = loss(
            x.numpy(), np.zeros(x.shape, x.numpy().dtype), reduction="none", alpha=alpha
        )
        np.testing.assert_allclose(value_np, expected.numpy(), rtol=tol["rtol"], atol=tol["atol"])


# ----------------------------------------------------------------- customloss-example
def test_example_plugin_losses_match_their_formulas():
    g = torch.Generator().manual_seed(11)
    p = torch.rand(32, generator=g, dtype=DT) * 10
    y = torch.rand(32, generator=g, dtype=DT) * 10
    msle = cl.get("msle")
    ours = x_and_grad(lambda t: msle(t, y), p)
    ref = x_and_grad(lambda t: ((torch.log1p(t) - torch.log1p(y)) ** 2).mean(), p)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=0)
    yb = (y > 5).to(DT)
    weighted = cl.get("weighted_sq", w_pos=4.0)
    ours = x_and_grad(lambda t: weighted(t, yb), p)
    ref = x_and_grad(lambda t: ((1 + 3.0 * yb) * (t - yb) ** 2).mean(), p)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ROBUST + EXAMPLE)
def test_plugin_losses_are_documented(name):
    info = cl.info(name)
    assert info.doc.strip() and info.summary
    if info.plugin == "robust":
        assert "References:" in info.doc and any("Barron" in r for r in info.references)


def test_the_plugin_docs_quote_the_example_plugin_verbatim():
    # docs/plugins.md walks through the example line by line: every code block of the
    # walk-through must be a verbatim excerpt of the file it explains.
    import re

    doc = (REPO / "docs" / "plugins.md").read_text()
    example = REPO / "plugins" / "customloss-example"
    sections = {
        "## `pyproject.toml`": (example / "pyproject.toml", "toml"),
        "## `customloss_example/__init__.py`": (
            example / "customloss_example" / "__init__.py",
            "python",
        ),
    }
    for heading, (path, lang) in sections.items():
        body = doc.split(heading, 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)
        assert len(blocks) >= 3, heading
        source = path.read_text()
        for block in blocks:
            assert block in source, f"docs/plugins.md block not in {path.name}:\n{block}"
        quoted = "".join(blocks)
        code_lines = [line for line in source.splitlines() if line.strip()]
        missing = [line for line in code_lines if line not in quoted]
        assert not missing, f"lines of {path.name} the walk-through skips: {missing}"


# ------------------------------------------- customloss-robust at extreme residuals
# Issue #8: u = (x/c)^2 overflows float32 for |x/c| > 1.8e19.  The references below are
# the textbook formulas of Barron (2019) in 200-digit mpmath (no overflow, no underflow),
# differentiated by central differences in mpmath; the losses must match them in float32
# and float64, or return inf of the right sign where the true value exceeds the dtype.
HUGE_RESIDUALS = [1e20, -1e20, 1e25, -3e27, 1e30, -1e30]


def barron_mp(name: str, x, c, alpha=None):
    """The paper's formula for ``name`` at residual ``x`` (mpmath numbers)."""
    u = (x / c) ** 2
    if name == "cauchy" or (name == "general_robust" and alpha == 0):
        return mpmath.log(u / 2 + 1)
    if name == "charbonnier":
        return mpmath.sqrt(u + 1) - 1
    if name == "geman_mcclure":
        return 2 * u / (u + 4)
    if name == "welsch" or (name == "general_robust" and alpha == -INF):
        return 1 - mpmath.exp(-u / 2)
    if alpha == INF:
        return mpmath.exp(u / 2) - 1
    if alpha == 2:
        return u / 2
    b = abs(alpha - 2)
    return b / alpha * ((u / b + 1) ** (alpha / 2) - 1)


def robust_reference(name: str, p: float, y: float, c: float, alpha=None) -> dict[str, object]:
    """Value and d/dp, d/dy, d/dc (and d/dalpha) of the paper's formula, in mpmath."""
    with mpmath.workdps(200):
        p_, y_, c_ = mpmath.mpf(p), mpmath.mpf(y), mpmath.mpf(c)

        def f(p, y, c, alpha=alpha):
            return barron_mp(name, p - y, c, alpha)

        scale = max(1, abs(p_), abs(y_), abs(c_))

        def d(g, at):  # central difference, step 1e-50 of the inputs' scale
            h = mpmath.mpf("1e-50") * scale
            return (g(at + h) - g(at - h)) / (2 * h)

        out = {
            "value": f(p_, y_, c_),
            "p": d(lambda t: f(t, y_, c_), p_),
            "y": d(lambda t: f(p_, t, c_), y_),
            "c": d(lambda t: f(p_, y_, t), c_),
        }
        if alpha is not None:
            if math.isinf(alpha) or alpha == 2:
                # the limits do not depend on alpha; at alpha = 2 the true derivative
                # diverges and the loss documents that it reports 0
                out["alpha"] = mpmath.mpf(0)
            else:
                out["alpha"] = d(lambda t: f(p_, y_, c_, t), mpmath.mpf(alpha))
        return out


def robust_ours(name, p, y, c, alpha, dtype) -> dict[str, list[float]]:
    """Value and gradients from the NumPy backend and from torch autograd (everything
    requiring grad), as float64 lists: [numpy, torch]."""
    loss = cl.get(name)
    params = {"c": c} if alpha is None else {"c": c, "alpha": alpha}
    x = np.array([p], dtype=dtype)
    t = np.array([y], dtype=dtype)
    ps = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    out = {"value": [float(loss(x, t, reduction="none", **ps)[0])]}
    for n in ("p", "y", *params):
        out[n] = [float(np.asarray(loss.gradient(x, t, wrt=n, reduction="none", **ps)).ravel()[0])]
    tdt = getattr(torch, np.dtype(dtype).name)
    xt = torch.tensor([p], dtype=tdt, requires_grad=True)
    tt = torch.tensor([y], dtype=tdt, requires_grad=True)
    pt = {k: torch.tensor([v], dtype=tdt, requires_grad=True) for k, v in params.items()}
    value = loss(xt, tt, reduction="none", **pt)
    grads = torch.autograd.grad(value.sum(), [xt, tt, *pt.values()])
    out["value"].append(value.item())
    for n, g in zip(("p", "y", *params), grads, strict=True):
        out[n].append(g.item())
    return out


def assert_matches_truth(got: float, truth, dtype, what: str, headroom: float = 1.0) -> None:
    """``got`` is ``truth`` rounded to ``dtype`` (rtol 1e-10 / 2e-5, values below the
    smallest normal number may flush to 0), or inf of the right sign beyond the range
    (beyond ``max / headroom`` where the formula squares before it halves)."""
    info = np.finfo(dtype)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    if abs(truth) > info.max / headroom:  # overflow: inf of the right sign is the rounded answer
        assert got == math.copysign(math.inf, truth), f"{what}: {got} (true {truth})"
        return
    assert math.isfinite(got), f"{what}: {got} where the true value is {mpmath.nstr(truth, 8)}"
    tiny = float(info.tiny)
    assert abs(got - float(truth)) <= rtol * abs(float(truth)) + 4 * tiny, (
        f"{what}: {got} != {mpmath.nstr(truth, 12)}"
    )


ROBUST_EXTREME = [(name, None) for name in ("cauchy", "charbonnier", "geman_mcclure", "welsch")] + [
    ("general_robust", a) for a in (-INF, -3.0, -0.5, 0.0, 0.5, 1.0, 2.0, 5.0, INF)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "alpha"), ROBUST_EXTREME, ids=lambda v: str(v))
def test_robust_losses_are_exact_at_huge_residuals(name, alpha, dtype):
    for x in HUGE_RESIDUALS:
        for y, c in ((0.0, 1.0), (0.5, 0.25), (-1.0, 5.0)):
            p = float(np.asarray(x + y, dtype=dtype))  # the point as the dtype holds it
            c_ = float(np.asarray(c, dtype=dtype))
            truth = robust_reference(name, p, y, c_, alpha)
            ours = robust_ours(name, p, y, c_, alpha, dtype)
            for quantity, values in ours.items():
                for backend, got in zip(("numpy", "torch"), values, strict=True):
                    what = f"{name} alpha={alpha} {backend} {quantity} at p={p:g} y={y} c={c}"
                    # alpha = 2 is u/2, computed as |x/c|**2 / 2: the square may overflow
                    # where its half would still fit (the top factor 2 of the range)
                    headroom = 2.0 if alpha == 2 and quantity == "value" else 1.0
                    assert_matches_truth(got, truth[quantity], dtype, what, headroom)


def test_the_cli_reports_a_strict_plugin_failure_in_one_line(broken_site):
    result = run_python(
        "import sys\nfrom customloss.cli import main\nsys.exit(main(['list']))\n",
        pythonpath=broken_site,
        **{STRICT_ENV: "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "customloss: error: customloss plugin 'broken_hook'" in result.stderr
