"""The documentation: getting-started code runs, the catalogue is generated, mkdocs builds.

``mkdocs build --strict`` is only generated as a test when the docs extra (mkdocs,
mkdocs-material, mkdocstrings) is installed; the other tests need the dev install only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy

import customloss as cl

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAVE_MKDOCS = all(
    importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings")
)


def _gen_catalogue():
    spec = importlib.util.spec_from_file_location("gen_catalogue", DOCS / "gen_catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _gen_catalogue()


def test_getting_started_code_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # the page shows the torch backend too
    text = (DOCS / "getting-started.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5 and sum("assert" in b for b in blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the plot example writes focal.png
    for i, code in enumerate(blocks):
        exec(compile(code, f"getting-started.md, block {i + 1}", "exec"), {"__name__": "docs"})
    assert (tmp_path / "focal.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_code_runs_from_the_repository_root(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)  # the README loads examples/losses/my_focal.toml
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks):  # later blocks use earlier ones' names
        exec(compile(code, f"README.md, block {i + 1}", "exec"), namespace)
    assert namespace["my_focal"].name == "my_focal"
    assert "def " in capsys.readouterr().out  # print(weighted_sq.source())


def test_catalogue_entries_have_formula_gradient_params_provider_plot():
    names = (
        ["focal", "ldam", "poly1", "msle"] if "msle" in cl.names() else ["focal", "ldam", "poly1"]
    )
    markdown, images = gen.render(names)
    sections = {s.split("\n", 1)[0]: s for s in markdown.split("\n## ")[1:]}
    assert list(sections) == names
    for name in names:
        loss, info = cl.get(name), cl.info(name)
        text = sections[name]
        assert f"$$\n{sympy.latex(loss.expr)}\n$$" in text
        assert f"$$\n{sympy.latex(loss.grad())}\n$$" in text
        for param in loss.params:
            assert f"`{param} = " in text
        assert f"plugin `{info.plugin}`" in text
        for ref in info.references:
            assert ref.split(" ")[0] in text
        png = images[f"{name}.png"]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(catalogue/{name}.png)" in text
        assert f"| [{name}](#{name}) |" in markdown
    assert "`counts = [1000, 10]`" in sections["ldam"]  # the example value is stated
    assert "Lin et al. (2017), fig. 1" in sections["focal"]


def test_catalogue_entry_without_values_for_required_params_has_no_plot(monkeypatch):
    monkeypatch.setattr(gen, "EXAMPLE_VALUES", {})
    markdown, images = gen.render(["ldam"])
    assert images == {}
    assert "No plot: param `counts` has no default." in markdown


def test_rst_docstrings_become_markdown():
    doc = (
        "Intro with ``code`` and :math:`x^2`.\n\n"
        ".. math::\n    a = b\n    + c\n\n"
        "Args:\n    gamma: focusing\n        parameter.\n    alpha: weight.\n\nTail."
    )
    md = gen.rst_to_markdown(doc)
    assert "Intro with `code` and $x^2$." in md
    assert "$$\na = b + c\n$$" in md
    assert "**Args**\n\n- gamma: focusing parameter.\n- alpha: weight." in md
    assert md.endswith("Tail.")


def test_script_needs_an_output_folder():
    result = subprocess.run(
        [sys.executable, str(DOCS / "gen_catalogue.py")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage:" in result.stderr


if HAVE_MKDOCS:

    @pytest.mark.slow
    def test_mkdocs_build_strict(tmp_path):
        site = tmp_path / "site"
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        page = (site / "catalogue" / "index.html").read_text()
        for name in cl.names():
            assert f'id="{name}"' in page
        plots = sorted(p.name for p in (site / "catalogue").glob("*.png"))
        assert len(plots) == len(cl.names())
        api = (site / "api" / "index.html").read_text()
        assert 'id="customloss.loss.Loss"' in api and 'id="customloss.plot.plot_loss"' in api
        assert (site / "getting-started" / "index.html").exists()
