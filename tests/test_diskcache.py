"""The disk cache of derivatives and generated kernels (customloss.diskcache)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sympy
import torch
import torch.nn.functional as F

import customloss as cl
from customloss import diskcache

loss_module = importlib.import_module("customloss.loss")

BCE = "-(y*log(sigmoid(x)) + (1 - y)*log(1 - sigmoid(x)))"

# A fresh process: defines naive BCE, prints JSON with what came from disk and the
# results next to torch's reference.
SCRIPT = textwrap.dedent(
    """
    import json, sys, importlib
    import torch, torch.nn.functional as F
    import customloss as cl
    from customloss import diskcache
    bce = cl.define("bce_" + sys.argv[1], BCE_SOURCE, inputs=("x", "y"))
    x = torch.linspace(-30, 30, 101, dtype=torch.float64, requires_grad=True)
    y = (torch.arange(101) % 2).double()
    value = bce(x, y)
    (g,) = torch.autograd.grad(value, x)
    ref = F.binary_cross_entropy_with_logits(x, y)
    (g_ref,) = torch.autograd.grad(ref, x)
    grad_expr = str(bce.grad())
    print(json.dumps({
        "hits": diskcache.hits,
        "builds": importlib.import_module("customloss.loss").kernel_builds,
        "value_err": abs(float((value - ref).detach())),
        "grad_err": float((g - g_ref).abs().max()),
        "grad_expr": grad_expr,
    }))
    """
).replace("BCE_SOURCE", repr(BCE))


def _run(cache: Path, tag: str = "a", **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, tag],
        env={**os.environ, "CUSTOMLOSS_CACHE_DIR": str(cache), "CUSTOMLOSS_COMPILE": "0", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def test_second_process_reads_kernels_and_derivatives_from_disk(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["hits"] == 0 and first["builds"] >= 1
    stored = _entries(tmp_path)
    assert {p.suffix for p in stored} == {".json", ".pickle"}
    assert all(p.stat().st_mode & 0o077 == 0 for p in stored)  # private to the user
    second = _run(tmp_path)
    # every kernel, the printed derivative and the parsed text come from disk, and are
    # still right
    assert second["hits"] == second["builds"] + 2
    for r in (first, second):
        assert r["value_err"] < 1e-12 and r["grad_err"] < 1e-12
    assert second["grad_expr"] == first["grad_expr"]
    # another loss name, same mathematics: same entries
    assert _run(tmp_path, "b")["hits"] == second["hits"]
    assert _entries(tmp_path) == stored


def test_disabled_cache_writes_nothing(tmp_path: Path) -> None:
    r = _run(tmp_path, CUSTOMLOSS_CACHE="0")
    assert r["hits"] == 0 and r["value_err"] < 1e-12
    assert _entries(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage_source", "world_writable"])
def test_damaged_or_untrusted_entries_are_regenerated(tmp_path: Path, damage: str) -> None:
    _run(tmp_path)
    for p in _entries(tmp_path):
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[:7])
        elif damage == "garbage_source" and p.suffix == ".json":
            entry = json.loads(p.read_text())
            entry["source"] = "def broken(:\n"
            p.write_text(json.dumps(entry))
        elif damage == "world_writable":
            p.chmod(0o666)
    r = _run(tmp_path)
    assert r["value_err"] < 1e-12 and r["grad_err"] < 1e-12
    # truncated/untrusted entries are not read; bad source is read but not used
    if damage != "garbage_source":
        assert r["hits"] == 0


def test_grad_from_cache_equals_sympy_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMLOSS_CACHE_DIR", str(tmp_path))
    src = "w*(p - y)**2 + log(1 + exp(p*k))"
    loss = cl.define("dc_grad", src, inputs=("p", "y"), params={"w": 1.0, "k": 2.0})
    d = loss.grad("k")
    s = loss.symbols
    ref = sympy.diff(
        s["w"] * (s["p"] - s["y"]) ** 2 + sympy.log(1 + sympy.exp(s["p"] * s["k"])), s["k"]
    )
    assert sympy.simplify(d - ref) == 0
    # a new process would read it back: unpickle it here through the cache API
    key = ("grad", loss._key, "k", 1, 1)
    assert sympy.simplify(diskcache.load("expr", key) - ref) == 0


def test_keys_do_not_depend_on_set_order() -> None:
    a = diskcache._path("kernel", ("k", frozenset({"alpha", "gamma", "beta"})))
    b = diskcache._path("kernel", ("k", frozenset({"gamma", "beta", "alpha"})))
    c = diskcache._path("kernel", ("k", frozenset({"gamma", "beta"})))
    assert a == b != c


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown cache kind 'source'"):
        diskcache.load("source", ())


def test_unwritable_directory_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CUSTOMLOSS_CACHE_DIR", str(blocker / "cache"))
    loss = cl.define("dc_unwritable", "(p - y)**2 * 3", inputs=("p", "y"))
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(loss(p, y), 3 * F.mse_loss(p, y))
    assert not diskcache.store("expr", ("x",), sympy.Integer(1))


def test_entry_moved_to_another_key_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv("CUSTOMLOSS_CACHE_DIR", str(root))
    a_key, b_key = ("k", "a"), ("k", "b")
    assert diskcache.store("expr", a_key, sympy.Integer(9))
    assert diskcache.store("expr", b_key, sympy.Integer(3))
    a_path, b_path = diskcache._path("expr", a_key), diskcache._path("expr", b_key)
    assert oct(root.stat().st_mode & 0o777) == oct(0o700)  # the created root is private
    assert diskcache.load("expr", b_key) == 3
    a_path.replace(b_path)  # A's entry under B's name
    assert diskcache.load("expr", b_key) is None


def test_shared_writable_directory_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv("CUSTOMLOSS_CACHE_DIR", str(root))
    assert diskcache.store("expr", ("k",), sympy.Integer(1))
    assert diskcache.load("expr", ("k",)) == 1
    root.chmod(0o777)
    assert diskcache.load("expr", ("k",)) is None
    assert not diskcache.store("expr", ("k2",), sympy.Integer(2))


def test_warm_define_builds_no_sympy_expression(tmp_path: Path) -> None:
    # read back unevaluated: SymPy's first Add flatten (which imports sympy.tensor) and
    # the parser are never needed; the loss is still right (vs torch's BCE)
    code = SCRIPT + textwrap.dedent(
        """
        print(json.dumps({"tensor": "sympy.tensor.tensor" in sys.modules,
                          "parse": "customloss.parse" in sys.modules}))
        """
    )
    env = {**os.environ, "CUSTOMLOSS_CACHE_DIR": str(tmp_path), "CUSTOMLOSS_COMPILE": "0"}
    for _attempt in range(2):
        out = (
            subprocess.run(
                [sys.executable, "-c", code, "w"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        result, modules = json.loads(out[-2]), json.loads(out[-1])
        assert result["value_err"] < 1e-12 and result["grad_err"] < 1e-12
    assert modules == {"tensor": False, "parse": False}


# customloss modules that only store, validate, dispatch or run what was generated
NOT_GENERATING = {
    "diskcache",
    "_lazy",
    "_validate",
    "registry",
    "hookspecs",
    "builtin",
    "builtin_classes",
    "torch_backend",
    "torch_classes",
    "numpy_backend",
    "numpy_classes",
    "fast",
    "serialize",
    "multitask",
    "check",
    "testing",
    "plot",
    "cli",
    "pytest_plugin",
}


def test_every_module_that_derives_or_generates_is_in_the_key() -> None:
    # a fresh process defines, differentiates and generates code; every customloss
    # module it loaded either is part of the cache key's fingerprint or is known not
    # to decide what is derived (an edit to a deriving module must give new keys)
    code = (
        "import sys, customloss as cl\n"
        f"b = cl.define('fp', {BCE!r}, inputs=('x', 'y')); b.grad(); b.source('numpy')\n"
        "print(' '.join(m.split('.', 1)[1] for m in sys.modules"
        " if m.startswith('customloss.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CUSTOMLOSS_CACHE": "0"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = set(out.stdout.split())
    assert "differentiate" in loaded and "calculus" in loaded
    missing = loaded - set(diskcache._GENERATORS) - NOT_GENERATING
    assert not missing, f"modules deriving code but not in diskcache._GENERATORS: {missing}"
