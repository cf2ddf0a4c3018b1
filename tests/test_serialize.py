"""Loss files and serialization: config round trips, TOML, pickle, torch.save."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import customloss as cl


def _inputs(loss, seed=0):
    rng = np.random.default_rng(seed)
    if loss.classes:
        z = rng.normal(size=(6, 4)) * 3
        if loss.name in ("categorical_crossentropy", "kl_div"):
            z = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return z, rng.integers(0, 4, size=6) if loss.name != "kl_div" else rng.dirichlet(
            np.ones(4), size=6
        )
    x = np.concatenate([rng.normal(size=12) * 3, [-1e4, -30.0, 30.0, 1e4]])
    if loss.name in ("bce",):
        x = 1 / (1 + np.exp(-np.clip(x, -50, 50)))
    y = (rng.uniform(size=x.size) > 0.5).astype(float)
    if loss.name == "hinge":
        y = 2 * y - 1
    return x, y


def _required(loss):
    return {k: np.array([10.0, 5.0, 2.0, 1.0]) for k, v in loss.params.items() if v is None}


@pytest.mark.parametrize("name", cl.names())
def test_every_registered_loss_round_trips_through_json(name):
    loss = cl.get(name)
    cfg = json.loads(json.dumps(loss.to_config()))
    assert set(cfg) >= {"name", "expr", "inputs", "params", "customloss_version", "sha256"}
    again = cl.get(cfg)
    assert again.params == loss.params and again.inputs == loss.inputs
    x, y = _inputs(loss)
    kw = _required(loss)
    np.testing.assert_array_equal(
        again(x, y, reduction="none", **kw), loss(x, y, reduction="none", **kw)
    )
    np.testing.assert_array_equal(again.gradient(x, y, **kw), loss.gradient(x, y, **kw))
    assert sympy.simplify(again.expr - loss.expr) == 0 or sympy.srepr(again.expr) == sympy.srepr(
        loss.expr
    )


def test_get_accepts_name_config_and_loss_with_defaults():
    focal = cl.get("focal")
    assert cl.get(focal, gamma=1.0).params["gamma"] == 1.0
    assert cl.get(focal.to_config(), gamma=3.0).params["gamma"] == 3.0
    assert focal.params["gamma"] == 2.0


TOML = """
name = "my_focal"
expr = "-(a*y*(1 - sigmoid(x))**g*log(sigmoid(x)) + (1 - a)*(1 - y)*sigmoid(x)**g*log(1 - sigmoid(x)))"
inputs = ["x", "y"]
doc = "Focal loss from a file."
references = ["Lin et al. 2017"]

[params]
a = 0.25
g = 2.0
"""


def test_load_toml_file(tmp_path):
    path = tmp_path / "my_focal.toml"
    path.write_text(TOML)
    loss = cl.load(path)
    assert loss.name == "my_focal" and loss.params == {"a": 0.25, "g": 2.0}
    assert loss.references == ("Lin et al. 2017",)
    x = torch.randn(20, dtype=torch.float64)
    y = (torch.rand(20) > 0.5).double()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    ref = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).mean()
    torch.testing.assert_close(loss(x, y), ref)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('name = "x"\nexpr = "p"\ninputs = ["p", "y"]\ncolour = 1\n', "unknown key 'colour'"),
        ('name = "x"\ninputs = ["p", "y"]\n', "missing the key 'expr'"),
        ('name = "x"\nexpr = "p + yy"\ninputs = ["p", "y"]\n', "unknown symbol 'yy'"),
        ('name = "x"\nexpr = "p\n', "not valid TOML"),
        ('name = "x"\nexpr = "__import__(1)"\ninputs = ["p", "y"]\n', "unknown function"),
    ],
)
def test_bad_loss_files_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        cl.load(path)
    assert "bad.toml" in str(info.value)


def test_unreadable_file_and_tampered_config(tmp_path):
    with pytest.raises(ValueError, match="cannot read loss file .*missing.toml"):
        cl.load(tmp_path / "missing.toml")
    cfg = cl.get("mse").to_config()
    cfg["expr"] = "(p - y)**4"
    with pytest.raises(ValueError, match="does not match its sha256"):
        cl.get(cfg)


def test_expression_without_dsl_spelling_is_refused():
    @cl.loss()
    def wavy(p, y):
        return sympy.sin(p - y) ** 2

    with pytest.raises(ValueError, match="'sin' has no DSL spelling"):
        wavy.to_config()


@cl.loss(params={"k": 2.0})
def user_loss(p, y, k):
    return (1 + k * y) * cl.log(cl.cosh(p - y))


def test_pickle_and_deepcopy_rebuild_from_the_mathematics():
    for clone in (pickle.loads(pickle.dumps(user_loss)), copy.deepcopy(user_loss)):
        assert clone.expr == user_loss.expr and clone.params == user_loss.params
        x, y = np.linspace(-3, 3, 7), np.zeros(7)
        np.testing.assert_array_equal(
            clone(x, y, reduction="none"), user_loss(x, y, reduction="none")
        )
    ce = pickle.loads(pickle.dumps(cl.get("cross_entropy", ignore_index=3)))
    assert ce.options["ignore_index"] == 3 and ce.per_class == cl.get("cross_entropy").per_class


def test_pickle_and_torch_save_load_in_a_fresh_process(tmp_path):
    module = user_loss.torch(k=3.0)
    torch.save(module, tmp_path / "module.pt")
    (tmp_path / "loss.pkl").write_bytes(pickle.dumps(user_loss))
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.float64)
    expected = [module(x, y).item(), user_loss(x, y).item()]
    code = textwrap.dedent(f"""
        import pickle, torch
        m = torch.load({str(tmp_path / "module.pt")!r}, weights_only=False)
        loss = pickle.loads(open({str(tmp_path / "loss.pkl")!r}, 'rb').read())
        x = torch.linspace(-2, 2, 5, dtype=torch.float64)
        y = torch.zeros(5, dtype=torch.float64)
        print(m(x, y).item(), loss(x, y).item())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.split()
    assert [float(v) for v in out] == pytest.approx(expected, rel=1e-15)


def test_notebook_representations():
    focal = cl.get("focal")
    latex = focal._repr_latex_()
    assert latex.startswith("$") and latex.endswith("$") and "gamma" in latex
    md = focal._repr_markdown_()
    assert "**focal**" in md and "\\frac{\\partial \\ell}{\\partial x}" in md
    assert "| `gamma` | 2.0 |" in md


def test_bad_files_and_configs_never_corrupt_the_registry(tmp_path):
    before = cl.names()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "mse"\nexpr = "p +"\ninputs = ["p", "y"]\n')
    with pytest.raises(ValueError):
        cl.load(bad)
    with pytest.raises(ValueError):
        cl.get({"name": "mse", "expr": "(p - y)**2", "inputs": ["p", "y"], "sha256": "0" * 64})
    with pytest.raises(ValueError, match="mse"):
        cl.register(cl.define("mse", "(p - y)**4", inputs=("p", "y")))  # a clash
    assert cl.names() == before
    x = np.array([1.0, 3.0])
    assert float(cl.get("mse")(x, np.zeros(2))) == pytest.approx(5.0)


def test_class_call_options_round_trip_through_the_config() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g)
    t = torch.tensor([0, 1, 255, 3, 0])
    ce = cl.get("cross_entropy", ignore_index=255)
    cfg = json.loads(json.dumps(ce.to_config()))
    assert cfg["options"] == {"ignore_index": 255}
    rebuilt = cl.get(cfg)
    torch.testing.assert_close(rebuilt(x, t), F.cross_entropy(x, t, ignore_index=255))
    last = cl.get("cross_entropy").with_defaults(class_dim=-1)
    xl = x.reshape(5, 1, 4)
    tl = torch.tensor([[0], [1], [2], [3], [0]])
    torch.testing.assert_close(
        cl.get(last.to_config())(xl, tl), F.cross_entropy(xl.permute(0, 2, 1), tl)
    )
    with pytest.raises(ValueError, match="unknown option 'ignore_idx'; valid options: class_dim"):
        cl.get({**cfg, "options": {"ignore_idx": 3}})
    with pytest.raises(ValueError, match="only class-axis losses take options"):
        cl.get({**cl.get("mse").to_config(), "options": {"ignore_index": 3}})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("doc", 5, "key 'doc' must be a string, got int 5"),
        ("domains", 3, "key 'domains' must be a table/dict of input -> domain"),
        ("inputs", ["p", 5], "key 'inputs' must be a list of two names"),
        ("classes", "false", "key 'classes' must be true or false, got str 'false'"),
        ("references", [1], "key 'references' must be a list of strings"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused_by_key(key, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        cl.get({**cl.get("mse").to_config(), key: value})


def test_a_loss_file_with_a_wrong_type_names_the_file_and_key(tmp_path) -> None:
    f = tmp_path / "l.toml"
    f.write_text(
        'name = "l"\nexpr = "(p - y)**2"\ninputs = ["p", "y"]\ndoc = 5\nreferences = "Huber"\n'
    )
    with pytest.raises(ValueError, match=r"l.toml'?: loss config key 'doc' must be a string"):
        cl.load(f)
    f.write_text('name = "l"\nexpr = "(p - y)**2"\ninputs = ["p", "y"]\nreferences = "Huber"\n')
    assert cl.load(f).references == ("Huber",)


def test_a_param_named_like_a_constant_round_trips() -> None:
    # E was printed "E", which the parser reads as the param E: a different loss
    p, y, e_param, pi_param = (sympy.Symbol(n, real=True) for n in ("p", "y", "E", "pi"))
    loss = cl.Loss("e_loss", e_param * y + sympy.E * p, inputs=("p", "y"), params={"E": 2.0})
    rebuilt = cl.get(json.loads(json.dumps(loss.to_config())))
    x, t = np.array([0.5, -1.0]), np.array([1.0, 2.0])
    np.testing.assert_allclose(rebuilt(x, t, reduction="none"), 2.0 * t + np.e * x, rtol=1e-15)
    both = cl.Loss("pi_loss", pi_param * y + sympy.pi * p, inputs=("p", "y"), params={"pi": 2.0})
    with pytest.raises(ValueError, match="uses the constant pi and a symbol named 'pi'"):
        both.to_config()


def test_the_shipped_example_loss_file_is_the_documented_one_and_is_focal():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    path = root / "examples" / "losses" / "my_focal.toml"
    loss = cl.load(path)
    assert loss.domains == {"y": "probability", "g": "nonnegative"}
    x = torch.tensor([-30.0, -2.0, 0.0, 0.7, 3.0, 30.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    ref = (0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2  # torchvision's formula
    torch.testing.assert_close(loss(x, y, reduction="none"), ref, rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError, match="param 'g' must be >= 0"):
        loss(x, y, g=-1.0)
    # docs/getting-started.md shows the same keys and values
    doc = (root / "docs" / "getting-started.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    import tomllib

    assert tomllib.loads(block) == tomllib.loads(path.read_text())
