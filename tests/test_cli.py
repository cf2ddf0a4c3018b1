"""The customloss command line: output, exit status and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sympy

import customloss as cl
from customloss import cli  # needs click and rich (the cli extra; part of the dev install)


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("customloss: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def loss_files(tmp_path):
    files = {
        "my_focal.toml": (
            'name = "my_focal"\n'
            'expr = "-(1 - sigmoid(x))**g * log_sigmoid(x) * y"\n'
            'inputs = ["x", "y"]\n'
            'doc = "A focal term from a file."\n'
            'references = ["Lin et al. 2017"]\n'
            "[params]\ng = 2.0\n"
        ),
        # overflows in float32 at |p| = 1e30 although the true value (|p|) is finite
        "hypot.toml": 'name = "hypot"\nexpr = "sqrt(p**2 + 1) - y"\ninputs = ["p", "y"]\n',
        # 0 * log 0 = nan at q = (1, 0, 0) with a one-hot target (true value 0)
        "cce.toml": (
            'name = "cce"\nexpr = "-csum(y*log(q))"\ninputs = ["q", "y"]\nclasses = true\n'
        ),
        "unknown_symbol.toml": 'name = "bad"\nexpr = "(p - yy)**2"\ninputs = ["p", "y"]\n',
        "broken.toml": "name = \n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


# -- list -------------------------------------------------------------------------
def test_list_shows_every_loss_with_provider_and_params(capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    for name in cl.names():
        assert name in rows
    assert "alpha=0.25" in out and "gamma=2" in out
    assert "builtin" in rows["focal"]
    assert "[classes]" in rows["cross_entropy"] and "[classes]" not in rows["focal"]
    assert f"{len(cl.names())} losses" in out


def test_list_pattern_filters(capsys):
    status, out, _ = run(capsys, "list", "*focal*")
    assert status == 0
    known = set(cl.names())
    names = [ln.split()[0] for ln in out.splitlines() if ln.strip() and ln.split()[0] in known]
    assert names == cl.names("*focal*") and len(names) >= 2
    assert "mse" not in out.split()


def test_list_without_match_is_an_error(capsys):
    status, _, err = run(capsys, "list", "nothing*")
    assert status == 2
    assert "no loss matches 'nothing*'" in one_line_error(err)


# -- show -------------------------------------------------------------------------
def test_show_latex_prints_the_formula_and_the_gradient(capsys):
    status, out, _ = run(capsys, "show", "mse", "--latex")
    assert status == 0
    assert r"\left(p - y\right)^{2}" in out
    assert "d mse / d p:\n2 p - 2 y" in out
    status, out, _ = run(capsys, "show", "mse", "--latex", "--wrt", "y")
    assert "d mse / d y:\n- 2 p + 2 y" in out


def test_show_substitutes_params_given_on_the_command_line(capsys):
    status, out, _ = run(capsys, "show", "focal", "--param", "alpha=-1", "-p", "gamma=0", "--latex")
    assert status == 0
    assert "params: alpha = -1, gamma = 2" not in out
    assert "params: alpha = -1, gamma = 0" in out
    loss_tex = out.split("loss:\n")[1].splitlines()[0]
    # alpha < 0 and gamma = 0: exactly the binary cross-entropy on logits
    x, y = sympy.symbols("x y", real=True)
    bce = y * sympy.log(1 + sympy.exp(-x)) + (1 - y) * sympy.log(sympy.exp(x) + 1)
    assert loss_tex == sympy.latex(bce)
    grad_tex = out.split("d focal / d x:\n")[1].splitlines()[0]
    for tex in (loss_tex, grad_tex):
        assert r"\alpha" not in tex and r"\gamma" not in tex
    assert "references:" in out and "Lin, T.-Y." in out
    assert "provider: plugin builtin (customloss" in out


def test_show_pretty_and_source(capsys):
    status, out, _ = run(capsys, "show", "hinge", "--source", "numpy")
    assert status == 0
    assert "d hinge / d x" in out
    assert "generated numpy code:" in out and "def " in out


def test_show_class_axis_gradient_in_latex(capsys):
    status, out, _ = run(capsys, "show", "poly1", "--latex")
    assert status == 0
    assert r"\left(\sum_{c}\left(e^{z}\right)\right)^{2}" in out


def test_show_loss_file(capsys, loss_files):
    status, out, _ = run(capsys, "show", str(loss_files / "my_focal.toml"))
    assert status == 0
    assert out.startswith("my_focal: A focal term from a file.")
    assert f"provider: file {loss_files / 'my_focal.toml'}" in out
    assert "params: g = 2" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "focall"), "unknown loss 'focall'; did you mean 'focal'?"),
        (("show", "focal", "--param", "gamma"), "expected NAME=VALUE"),
        (("show", "focal", "--param", "gamma=two"), "'two' is not a number"),
        (("show", "focal", "--param", "gama=1"), "has no param 'gama'"),
        (("show", "focal", "--param", "gamma=1,2"), "give one value"),
        (("show", "focal", "-p", "gamma=1", "-p", "gamma=2"), "given twice"),
        (("show", "focal", "--wrt", "q"), "has no symbol 'q'"),
        (("show", "missing.toml"), "no such loss file: missing.toml"),
        (("check", "ldam"), "needs --param counts=..."),
        (("plot", "focal", "-p", "gamma=0,1", "-p", "alpha=0,1"), "only one --param"),
        (("plot", "focal", "-p", "counts=[1,2"), "unbalanced brackets"),
        (("plot", "cross_entropy", "--x", "residual"), "not defined for the class-axis loss"),
        (("plot", "mse", "--range", "3,1"), "low < high"),
        (("bench",), "name one or more losses, or pass --all"),
        (("bench", "mse", "--all"), "not both"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(capsys, args, message):
    status, _, err = run(capsys, *args)
    assert status == 2
    assert message in one_line_error(err)


def test_bad_loss_files_are_one_line_errors(capsys, loss_files):
    status, _, err = run(capsys, "show", str(loss_files / "unknown_symbol.toml"))
    assert status == 2
    assert "unknown symbol 'yy'" in one_line_error(err)
    status, _, err = run(capsys, "check", str(loss_files / "broken.toml"))
    assert status == 2
    assert "not valid TOML" in one_line_error(err)


def test_console_script_errors_have_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "customloss.cli", "show", "focall"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "customloss: error: unknown loss 'focall'; did you mean 'focal'?"
    )


# -- parse_param ----------------------------------------------------------------
def test_parse_param_values_and_vectors():
    assert cli.parse_param("gamma=0,0.5,1,2,5") == ("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
    assert cli.parse_param("counts=[1000, 10]") == ("counts", [(1000.0, 10.0)])
    assert cli.parse_param("w=[1,2],[3,4]") == ("w", [(1.0, 2.0), (3.0, 4.0)])
    assert cli.parse_param("alpha=-inf")[1][0] == -np.inf
    for bad in ("=1", "gamma=", "gamma=1,,2", "w=[]", "1x=2"):
        with pytest.raises(cli.CliError):
            cli.parse_param(bad)


# -- check ------------------------------------------------------------------------
def test_check_passes_on_a_builtin(capsys):
    status, out, _ = run(capsys, "check", "huber", "--quick")
    assert status == 0
    assert "d/dp vs finite differences" in out and "d/ddelta vs finite differences" in out
    assert "NumPy == Torch: d/ddelta" in out
    assert "extreme inputs (customloss.check)" in out
    assert out.rstrip().endswith("huber: all checks passed")
    assert "FAIL" not in out


def test_check_reports_overflow_at_extreme_inputs(capsys, loss_files):
    status, out, err = run(capsys, "check", str(loss_files / "hypot.toml"), "--quick")
    assert status == 1
    assert "FAIL" in out
    assert "input=1e+30" in out and "value is inf" in out
    assert "hypot: 1 check(s) failed" in err


def test_check_class_axis_loss_uses_the_extreme_scan(capsys, loss_files):
    # -sum y log q with y = 0 at q = 0: 0 * -inf = nan where the true value (0 log 0 = 0)
    # is finite; -log(0.5) = 0.693147 for the target (0, 0.9, 0.1)
    status, out, _ = run(capsys, "check", str(loss_files / "cce.toml"))
    assert status == 1
    assert "extreme inputs (customloss.check)" in out
    assert "input=(0, 0.5, 0.5) target=(0, 0.9, 0.1): value is nan; limit 0.693147" in out
    status, out, _ = run(capsys, "check", "cross_entropy", "--classes", "4")
    assert status == 0
    assert "extreme inputs (customloss.check)" in out and "FAIL" not in out


def test_check_catches_a_wrong_gradient(capsys, monkeypatch):
    loss = cl.get("log_cosh")
    right = loss.gradient
    loss.gradient = lambda *a, **k: 1.001 * right(*a, **k)  # 0.1 % off
    monkeypatch.setattr(cli, "load_loss", lambda spec: loss)
    status, out, _ = run(capsys, "check", "log_cosh", "--no-scan")
    assert status == 1
    lines = {ln.split("  ")[0].strip(): ln for ln in out.splitlines()}
    assert "FAIL" in lines["d/dp vs finite differences"]
    assert "FAIL" in lines["NumPy == Torch: d/dp"]
    assert "FAIL" not in lines["NumPy == Torch: value"]


def test_extreme_scan_falls_back_without_customloss_check(monkeypatch, loss_files):
    monkeypatch.setitem(sys.modules, "customloss.check", None)  # import fails
    result, report = cli._extreme_scan(cl.get("bce_with_logits"), {}, quick=True)
    assert report is None and result.name == "extreme inputs (built-in scan)"
    assert result.ok, result.detail
    cce = cl.load(loss_files / "cce.toml")
    result, _ = cli._extreme_scan(cce, {}, quick=True)
    assert result.ok is False and "is nan" in result.detail


def test_main_restores_the_warning_hook(capsys):
    import warnings

    before = warnings.showwarning
    run(capsys, "list", "mse")
    assert warnings.showwarning is before


def test_finite_difference_check_ignores_kinks_and_the_domain():
    # |p - y| has a kink, log(1 + p) a domain (p > -1): neither is reported
    loss = cl.define("kinky", "abs(p - y) + log(1 + p)", inputs=("p", "y"))
    results = cli.finite_difference_check(loss, {}, n=200)
    assert all(r.ok for r in results), [r.detail for r in results]
    # the sample has negative p (regression domain): those points are left out
    assert all(int(r.detail.split()[0]) < 200 for r in results)


# -- plot -------------------------------------------------------------------------
def test_plot_writes_lin_et_al_figure(capsys, tmp_path):
    out_file = tmp_path / "f.png"
    status, out, _ = run(
        capsys,
        "plot",
        "focal",
        "--param",
        "gamma=0,0.5,1,2,5",
        "--x",
        "p_t",
        "--out",
        str(out_file),
    )
    assert status == 0
    assert f"wrote {out_file}" in out
    assert "alpha = -1" in out  # the note on the preset
    assert out_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "h.svg"
    status, out, _ = run(capsys, "plot", "huber", "-p", "delta=0.5,1", "--no-grad", "-o", str(svg))
    assert status == 0 and "<svg" in svg.read_text()[:500]
    assert "note:" not in out


def test_plot_default_output_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "plot", "ldam", "-p", "counts=[1000,10]")
    assert status == 0
    assert (tmp_path / "ldam.png").exists()


# -- bench ------------------------------------------------------------------------
def test_bench_times_ours_against_the_reference(capsys):
    pytest.importorskip("torch")
    status, out, _ = run(
        capsys,
        "bench",
        "mse",
        "poly1",
        "ldam",
        "--n",
        "2000",
        "--reps",
        "2",
        "--eager",
        "--threads",
        "1",
    )
    assert status == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "F.mse_loss" in rows["mse"] and "eager" in rows["mse"]
    ours_ms, ref_ms, ratio = rows["mse"].split()[1], rows["mse"].split()[3], rows["mse"].split()[4]
    assert float(ours_ms) > 0 and float(ref_ms) > 0
    # all three are shown with 3 significant digits
    assert float(ratio.rstrip("x")) == pytest.approx(float(ours_ms) / float(ref_ms), rel=0.02)
    assert rows["poly1"].split()[2] == "-"  # no torch reference
    assert "skipped: param 'counts' has no default" in rows["ldam"]


def test_bench_eager_leaves_the_compile_switch_as_it_was(capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("CUSTOMLOSS_COMPILE", "auto")
    status, _, _ = run(capsys, "bench", "mse", "--n", "100", "--reps", "1", "--eager")
    assert status == 0
    assert os.environ["CUSTOMLOSS_COMPILE"] == "auto"


def test_a_registered_name_wins_over_a_file_or_folder_of_that_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "focal").mkdir()
    (tmp_path / "mse").write_text("not a loss file")
    code, out, err = run(capsys, "show", "focal")
    assert code == 0, err
    assert "focal: Sigmoid focal loss" in out and "plugin builtin" in out
    code, out, err = run(capsys, "show", "mse")
    assert code == 0, err
    assert out.startswith("mse: Mean squared error")
    code, out, err = run(capsys, "show", "./mse")  # a path is a file
    assert code == 2 and "loss file 'mse' is not valid TOML" in err


def _without(tmp_path, module: str) -> dict[str, str]:
    """An environment in which ``import <module>`` fails as if it were not installed."""
    stub = tmp_path / "stubs" / module
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "stubs"), env.get("PYTHONPATH", "")])
    return env


def test_without_the_cli_extra_the_command_says_so_in_one_line(tmp_path):
    env = _without(tmp_path, "click")
    out = subprocess.run(
        [sys.executable, "-m", "customloss", "list"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2
    assert out.stderr == (
        "customloss: error: the command line needs click, which is not installed: "
        "pip install 'customloss[cli]'\n"
    )
    # the console script's target is the same launcher
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["customloss"] == "customloss.__main__:main"


def test_check_without_torch_scans_numpy_in_float32_and_float64(tmp_path):
    code = (
        "import customloss as cl\n"
        "r = cl.check(cl.get('huber'))\n"
        "print(r.ok, r.dtypes, r.backends)\n"
        "try:\n"
        "    cl.check(cl.get('huber'), dtypes=['bfloat16'])\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "from customloss.testing import check_loss\n"
        "try:\n"
        "    check_loss(cl.get('huber'))\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    env = _without(tmp_path, "torch")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "True ('float32', 'float64') ('numpy',)"
    assert lines[1] == "check(): scanning bfloat16 needs torch, which is not installed"
    assert lines[2].startswith("check_loss() needs torch")
    cli_run = subprocess.run(
        [sys.executable, "-m", "customloss", "check", "huber", "--quick"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert cli_run.returncode == 0, cli_run.stdout + cli_run.stderr
    assert "huber: all checks passed" in cli_run.stdout
