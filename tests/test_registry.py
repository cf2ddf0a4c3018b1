"""Tests for customloss.registry: lookup, registration, plugin loading, fault isolation.

Most tests build a fresh ``Registry`` fed with in-memory plugins through fake entry
points, so they are fast and independent of what is installed; the fresh-interpreter
tests at the end check the real default registry and its laziness.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import customloss as cl
from customloss import builtin, registry
from customloss.registry import (
    DISABLE_ENV,
    STRICT_ENV,
    PluginLoadError,
    PluginLoadWarning,
    Registry,
    UnknownLossError,
)

ELEMENTWISE_NAMES = [
    "asymmetric",
    "bce",
    "bce_with_logits",
    "focal",
    "hinge",
    "huber",
    "log_cosh",
    "mae",
    "mse",
    "poisson_nll",
    "quantile",
    "smooth_l1",
]
CLASS_NAMES = [
    "categorical_crossentropy",
    "class_balanced",
    "class_balanced_bce",
    "class_balanced_focal",
    "cross_entropy",
    "kl_div",
    "ldam",
    "poly1",
    "softmax_focal",
]
BUILTIN_NAMES = sorted(ELEMENTWISE_NAMES + CLASS_NAMES)


# --------------------------------------------------------------------------- helpers
@dataclass
class FakeDistribution:
    name: str
    version: str = "1.2.3"


@dataclass
class FakeEntryPoint:
    """Quacks like ``importlib.metadata.EntryPoint`` (name, value, dist, load())."""

    name: str
    plugin: object = None
    error: BaseException | None = None
    dist: FakeDistribution | None = field(default=None)
    loads: int = 0

    def __post_init__(self) -> None:
        if self.dist is None:
            self.dist = FakeDistribution(f"dist-{self.name}")

    @property
    def value(self) -> str:
        return f"module_{self.name}"

    def load(self) -> object:
        self.loads += 1
        if self.error is not None:
            raise self.error
        return self.plugin


def sq(name: str, k: float = 1.0) -> cl.Loss:
    """A small loss whose value is easy to check: k * (p - y)**2."""
    return cl.define(name, "k * (p - y)**2", inputs=("p", "y"), params={"k": k})


def plugin(
    modname: str, *losses: cl.Loss, raise_after: BaseException | None = None, replace: bool = False
) -> types.ModuleType:
    """A plugin module registering ``losses``, optionally raising afterwards."""
    module = types.ModuleType(modname)

    @cl.hookimpl
    def register_losses(register):
        for item in losses:
            register(item, replace=replace)
        if raise_after is not None:
            raise raise_after

    module.register_losses = register_losses
    return module


def wrapper_plugin() -> types.ModuleType:
    module = types.ModuleType("plug_wrapper")

    @cl.hookimpl(wrapper=True)
    def register_losses(register):
        register(sq("from_wrapper"))
        return (yield)

    module.register_losses = register_losses
    return module


def fresh(*entry_points: FakeEntryPoint, builtins: bool = False, **kwargs) -> Registry:
    return Registry(
        default_plugins=(("builtin", "customloss.builtin"),) if builtins else (),
        entry_points=lambda: list(entry_points),
        strict=kwargs.pop("strict", False),
        disabled=kwargs.pop("disabled", ()),
        **kwargs,
    )


def recorded(fn):
    """Run ``fn()``; return (result, list of warning messages of PluginLoadWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environment = {**os.environ, **env}
    for key in (STRICT_ENV, DISABLE_ENV):
        if key not in env:
            environment.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def _no_plugin_environment(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)


# ------------------------------------------------------------------ names / get / info
def test_names_lists_the_builtin_catalogue_sorted():
    reg = fresh(builtins=True)
    assert reg.names() == BUILTIN_NAMES
    assert len(reg) == len(BUILTIN_NAMES)
    assert "focal" in reg and "focall" not in reg


def test_names_filters_with_fnmatch_case_sensitively():
    reg = fresh(builtins=True)
    assert reg.names("*focal*") == ["class_balanced_focal", "focal", "softmax_focal"]
    assert reg.names("bce*") == ["bce", "bce_with_logits"]
    assert reg.names("?ae") == ["mae"]
    assert reg.names("m[as]e") == ["mae", "mse"]
    assert reg.names("FOCAL") == []
    with pytest.raises(TypeError, match="pattern must be a string"):
        reg.names(3)


def test_module_level_api_uses_the_default_registry():
    assert set(BUILTIN_NAMES) <= set(cl.names())
    assert cl.names("*focal*") == [n for n in cl.names() if "focal" in n]
    assert cl.info("mse").plugin == "builtin"
    assert cl.get("huber").params == {"delta": 1.0}


def test_get_returns_a_new_loss_with_other_defaults_and_never_changes_the_registered_one():
    reg = fresh(builtins=True)
    a = reg.get("focal", gamma=1.0)
    assert a.params == {"alpha": 0.25, "gamma": 1.0}
    assert reg.get("focal").params == {"alpha": 0.25, "gamma": 2.0}
    b = reg.get("focal")
    assert b is not reg.get("focal")
    b.params["gamma"] = 7.0  # mutating what we were handed cannot reach the registry
    assert reg.get("focal").params["gamma"] == 2.0
    assert reg.info("focal").params["gamma"] == 2.0


def test_get_with_defaults_changes_the_computed_value():
    reg = fresh(FakeEntryPoint("sq", plugin("plug_sq", sq("sq", k=1.0))))
    p, y = np.array([1.0, 3.0]), np.array([0.0, 1.0])
    # mean(k * (p - y)^2) = k * (1 + 4) / 2
    assert float(reg.get("sq")(p, y)) == pytest.approx(2.5)
    assert float(reg.get("sq", k=3.0)(p, y)) == pytest.approx(7.5)
    assert float(reg.get("sq")(p, y)) == pytest.approx(2.5)


def test_unknown_name_is_a_key_error_suggesting_close_matches():
    reg = fresh(builtins=True)
    with pytest.raises(KeyError) as excinfo:
        reg.get("focall")
    assert isinstance(excinfo.value, UnknownLossError)
    assert str(excinfo.value) == "unknown loss 'focall'; did you mean 'focal'?"
    with pytest.raises(KeyError, match=r"did you mean 'huber'\?"):
        reg.info("hubr")
    with pytest.raises(
        KeyError, match=r"did you mean 'mae' or 'mse'\?|did you mean 'mse' or 'mae'\?"
    ):
        reg.get("mxe")
    with pytest.raises(KeyError, match=r"unknown loss 'zzzz'; no registered loss .* all 21"):
        reg.get("zzzz")


def test_unknown_name_suggests_a_different_case():
    reg = fresh(builtins=True)
    with pytest.raises(KeyError, match=r"did you mean 'mse'"):
        reg.get("MSE")


def test_get_rejects_non_string_names():
    with pytest.raises(TypeError, match="loss name must be a string"):
        fresh(builtins=True).get(None)


def test_unknown_param_in_get_is_a_type_error_listing_the_valid_params():
    reg = fresh(builtins=True)
    with pytest.raises(TypeError) as excinfo:
        reg.get("focal", gama=1.0)
    message = str(excinfo.value)
    assert "'gama'" in message and "did you mean 'gamma'" in message
    assert "valid params: alpha, gamma" in message
    with pytest.raises(TypeError, match="has no param 'delta'; valid params: none"):
        reg.get("mse", delta=1.0)


def test_info_describes_provider_doc_params_and_references():
    info = fresh(builtins=True).info("focal")
    assert isinstance(info, registry.LossInfo)
    assert (info.name, info.plugin, info.distribution) == ("focal", "builtin", "customloss")
    assert info.version == cl.__version__
    assert info.module == "customloss.builtin"
    assert dict(info.params) == {"alpha": 0.25, "gamma": 2.0}
    assert info.inputs == ("x", "y")
    assert any("Lin" in r and "Focal Loss" in r for r in info.references)
    assert "References" in info.doc and info.summary.startswith("Sigmoid focal loss")
    with pytest.raises(TypeError):
        info.params["gamma"] = 1.0  # read-only view
    with pytest.raises(AttributeError):
        info.plugin = "other"  # frozen


def test_info_of_a_plugin_loss_names_its_entry_point_distribution():
    ep = FakeEntryPoint(
        "extra",
        plugin("plug_extra", sq("extra_sq")),
        dist=FakeDistribution("customloss-extra", "0.9"),
    )
    info = fresh(ep).info("extra_sq")
    assert (info.plugin, info.distribution, info.version, info.module) == (
        "extra",
        "customloss-extra",
        "0.9",
        "plug_extra",
    )


# --------------------------------------------------------------------------- register
def test_register_adds_a_loss_and_returns_it():
    reg = fresh(builtins=True)
    mine = sq("my_sq", k=2.0)
    assert reg.register(mine) is mine
    assert "my_sq" in reg.names()
    got = reg.get("my_sq")
    assert got is not mine and got.params == {"k": 2.0}
    info = reg.info("my_sq")
    assert info.plugin is None and info.distribution is None
    assert info.module == __name__


def test_register_works_as_a_decorator():
    reg = fresh()

    @reg.register
    @cl.loss(params={"w": 2.0})
    def weighted(p, y, w):
        return w * (p - y) ** 2

    assert isinstance(weighted, cl.Loss)
    # w * (p - y)^2 at p - y = 3 is 18
    assert float(reg.get("weighted")(np.array([3.0]), np.array([0.0]))) == pytest.approx(18.0)


def test_register_keeps_a_private_copy():
    reg = fresh()
    mine = sq("copy_sq", k=2.0)
    reg.register(mine)
    mine.params["k"] = 100.0
    assert reg.get("copy_sq").params == {"k": 2.0}


def test_register_clash_with_a_builtin_names_the_loss_and_both_providers():
    reg = fresh(builtins=True)  # not loaded yet: register must load plugins first
    with pytest.raises(ValueError) as excinfo:
        reg.register(sq("mse"))
    message = str(excinfo.value)
    assert "'mse'" in message
    assert "plugin 'builtin' (distribution customloss" in message
    assert f"customloss.register() in module {__name__!r}" in message
    assert "replace=True" in message


def test_register_clash_with_a_plugin_loss_names_the_plugin_distribution():
    ep = FakeEntryPoint(
        "extra",
        plugin("plug_extra2", sq("extra_sq")),
        dist=FakeDistribution("customloss-extra", "0.9"),
    )
    reg = fresh(ep)
    with pytest.raises(
        ValueError,
        match=r"'extra_sq' is already registered by plugin 'extra' "
        r"\(distribution customloss-extra 0.9\)",
    ):
        reg.register(sq("extra_sq"))


def test_register_replace_overrides_explicitly():
    reg = fresh(builtins=True)
    mine = cl.define("mse", "abs(p - y)", inputs=("p", "y"))
    reg.register(mine, replace=True)
    assert reg.info("mse").plugin is None
    # the replacement computes |p - y|, not (p - y)^2
    assert float(reg.get("mse")(np.array([3.0]), np.array([0.0]))) == pytest.approx(3.0)


def test_register_refuses_what_is_not_a_loss():
    reg = fresh()
    with pytest.raises(TypeError, match=r"expects a customloss.Loss .* got function"):
        reg.register(lambda p, y: (p - y) ** 2)


# ----------------------------------------------------------- plugin loading (in-memory)
def test_builtins_come_through_the_same_hook_as_a_default_plugin():
    assert hasattr(builtin.register_losses, "customloss_impl")  # a pluggy hookimpl
    assert fresh().names() == []  # no default plugins, no entry points: nothing
    reg = fresh(builtins=True)
    (info,) = reg.plugins()
    assert (info.name, info.distribution) == ("builtin", "customloss")
    assert sorted(info.losses) == BUILTIN_NAMES
    assert reg.plugin_manager.has_plugin("builtin")
    assert reg.plugin_manager.get_plugin("builtin") is builtin


def test_plugins_load_lazily_and_once():
    ep = FakeEntryPoint("lazy", plugin("plug_lazy", sq("lazy_sq")))
    reg = fresh(ep)
    assert ep.loads == 0 and "not loaded" in repr(reg)
    reg.names()
    reg.get("lazy_sq")
    reg.info("lazy_sq")
    reg.register(sq("other"))
    assert ep.loads == 1


def test_loading_is_thread_safe_and_happens_once():
    class SlowEntryPoint(FakeEntryPoint):
        def load(self):
            time.sleep(0.05)
            return super().load()

    ep = SlowEntryPoint("slow", plugin("plug_slow", sq("slow_sq")))
    reg = fresh(ep)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(reg.names())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ep.loads == 1
    assert results == [["slow_sq"]] * 8


def test_entry_points_load_in_name_order_after_the_builtins():
    eps = [FakeEntryPoint(n, plugin(f"plug_order_{n}", sq(f"{n}_sq"))) for n in ("zeta", "alpha")]
    reg = fresh(*eps, builtins=True)
    assert [p.name for p in reg.plugins()] == ["builtin", "alpha", "zeta"]


def test_a_broken_plugin_warns_and_does_not_block_the_others():
    good_a = FakeEntryPoint("a_good", plugin("plug_a_good", sq("a_sq")))
    import_error = FakeEntryPoint(
        "b_import",
        error=ModuleNotFoundError("No module named 'missing_dep'"),
        dist=FakeDistribution("customloss-bimport", "0.1"),
    )
    # Registered after a_good: one pluggy hook call would run it *first* and stop there.
    hook_error = FakeEntryPoint(
        "c_hook",
        plugin("plug_c_hook", sq("c_sq"), raise_after=ZeroDivisionError("division by zero")),
        dist=FakeDistribution("customloss-chook", "0.2"),
    )
    good_d = FakeEntryPoint("d_good", plugin("plug_d_good", sq("d_sq")))
    reg = fresh(good_a, import_error, hook_error, good_d, builtins=True)

    names, messages = recorded(reg.names)

    assert "a_sq" in names and "d_sq" in names and "mse" in names
    # the hook registered c_sq before raising: atomic per plugin, so it is not there
    assert "c_sq" not in names
    assert len(messages) == 2
    imp, hook = messages
    assert "plugin 'b_import'" in imp and "entry point 'b_import = module_b_import'" in imp
    assert "distribution customloss-bimport 0.1" in imp
    assert "importing it raised ModuleNotFoundError: No module named 'missing_dep'" in imp
    assert "plugin 'c_hook'" in hook and "distribution customloss-chook 0.2" in hook
    assert "register_losses hook raised ZeroDivisionError: division by zero" in hook
    assert f"{DISABLE_ENV}=c_hook" in hook
    assert [f.name for f in reg.failures] == ["b_import", "c_hook"]
    assert isinstance(reg.failures[1].error, ZeroDivisionError)
    assert not reg.plugin_manager.has_plugin("c_hook")
    assert [p.name for p in reg.plugins()] == ["builtin", "a_good", "d_good"]


def test_unknown_name_mentions_plugins_that_failed():
    reg = fresh(FakeEntryPoint("broken", error=ImportError("boom")))
    _, messages = recorded(reg.names)
    assert len(messages) == 1
    with pytest.raises(KeyError, match="plugin\\(s\\) 'broken' failed to load"):
        reg.get("anything")


def deferred_plugin(kind: str) -> types.ModuleType:
    """A plugin whose register_losses body never runs when called (async, generator)."""
    module = types.ModuleType(f"plug_deferred_{kind}")
    loss = sq(f"deferred_{kind.replace('-', '_')}")
    if kind == "async":

        @cl.hookimpl
        async def register_losses(register):
            register(loss)

    elif kind == "generator":

        @cl.hookimpl
        def register_losses(register):
            register(loss)
            yield

    else:

        async def body(register):
            register(loss)

        @cl.hookimpl
        def register_losses(register):
            return body(register)

    module.register_losses = register_losses
    return module


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (types.ModuleType("plug_no_hook"), "has no register_losses hook implementation"),
        (
            plugin("plug_not_a_loss", "not a loss"),
            "TypeError: register() expects a customloss.Loss",
        ),
        (plugin("plug_dup", sq("dup"), sq("dup")), "'dup' is already registered by plugin 'bad'"),
        (wrapper_plugin(), "checking it raised TypeError: its register_losses is a hook wrapper"),
        (
            deferred_plugin("async"),
            "checking it raised TypeError: its register_losses is an async def; it must be "
            "a plain function that calls register(...)",
        ),
        (
            deferred_plugin("generator"),
            "checking it raised TypeError: its register_losses is a generator",
        ),
        (
            deferred_plugin("returns-coroutine"),
            "calling its register_losses hook raised TypeError: its register_losses returned "
            "coroutine",
        ),
    ],
    ids=[
        "no-hookimpl",
        "not-a-loss",
        "duplicate-in-plugin",
        "wrapper",
        "async",
        "generator",
        "returns-coroutine",
    ],
)
def test_invalid_plugins_are_skipped_with_a_warning(module, expected):
    good = FakeEntryPoint("good", plugin(f"plug_good_{id(module)}", sq("good_sq")))
    reg = fresh(FakeEntryPoint("bad", module), good)
    names, messages = recorded(reg.names)
    assert names == ["good_sq"]
    assert len(messages) == 1 and "plugin 'bad'" in messages[0] and expected in messages[0]


def test_a_hookimpl_with_a_wrong_signature_is_refused_by_pluggy_validation():
    module = types.ModuleType("plug_bad_signature")

    @cl.hookimpl
    def register_losses(register, extra):
        raise AssertionError("never called")

    module.register_losses = register_losses
    reg = fresh(FakeEntryPoint("sig", module))
    names, messages = recorded(reg.names)
    assert names == []
    assert len(messages) == 1
    assert "registering it with pluggy raised PluginValidationError" in messages[0]
    assert "extra" in messages[0]


def test_a_clash_between_plugins_skips_the_second_and_names_both():
    first = FakeEntryPoint(
        "first",
        plugin("plug_first", sq("shared"), sq("first_only")),
        dist=FakeDistribution("dist-one", "1.0"),
    )
    second = FakeEntryPoint(
        "second",
        plugin("plug_second", sq("second_only"), sq("shared")),
        dist=FakeDistribution("dist-two", "2.0"),
    )
    reg = fresh(first, second)
    names, messages = recorded(reg.names)
    assert names == ["first_only", "shared"]  # second_only was staged, then rolled back
    assert reg.info("shared").plugin == "first"
    (message,) = messages
    assert "'shared' is already registered by plugin 'first' (distribution dist-one 1.0)" in message
    assert "plugin 'second' (distribution dist-two 2.0) cannot register it again" in message


def test_a_plugin_may_override_a_builtin_with_replace():
    ep = FakeEntryPoint("override", plugin("plug_override", sq("mse", k=5.0), replace=True))
    reg = fresh(ep, builtins=True)
    assert reg.info("mse").plugin == "override"
    assert float(reg.get("mse")(np.array([1.0]), np.array([0.0]))) == pytest.approx(5.0)


def test_two_entry_points_with_one_name_keep_the_first():
    first = FakeEntryPoint("same", plugin("plug_same_1", sq("one")), dist=FakeDistribution("d1"))
    second = FakeEntryPoint("same", plugin("plug_same_2", sq("two")), dist=FakeDistribution("d2"))
    reg = fresh(first, second)
    names, messages = recorded(reg.names)
    assert names == ["one"]
    assert len(messages) == 1 and "a plugin named 'same' is already loaded by d1" in messages[0]


def test_a_plugin_must_use_the_callback_not_the_global_register():
    module = types.ModuleType("plug_global")
    holder: dict[str, Registry] = {}

    @cl.hookimpl
    def register_losses(register):
        holder["reg"].register(sq("via_global"))

    module.register_losses = register_losses
    reg = fresh(FakeEntryPoint("global", module))
    holder["reg"] = reg
    names, messages = recorded(reg.names)
    assert names == []
    assert len(messages) == 1
    assert "RuntimeError" in messages[0] and "`register` callback" in messages[0]


def test_a_plugin_hook_can_read_the_builtins_while_loading():
    module = types.ModuleType("plug_reader")
    holder: dict[str, Registry] = {}

    @cl.hookimpl
    def register_losses(register):
        base = holder["reg"].get("focal", gamma=0.0)
        register(cl.Loss("focal_ce", base.expr, inputs=base.inputs, params=base.params))

    module.register_losses = register_losses
    reg = fresh(FakeEntryPoint("reader", module), builtins=True)
    holder["reg"] = reg
    assert reg.get("focal_ce").params == {"alpha": 0.25, "gamma": 0.0}


def test_add_plugin_registers_an_object_atomically_or_raises():
    reg = fresh()
    reg.add_plugin(plugin("plug_added", sq("added_sq")), name="added")
    assert reg.info("added_sq").plugin == "added"
    with pytest.raises(PluginLoadError, match="'bad_added'.*ValueError") as excinfo:
        reg.add_plugin(
            plugin("plug_bad_added", sq("x1"), raise_after=ValueError("no")), name="bad_added"
        )
    assert isinstance(excinfo.value.__cause__, ValueError)
    assert reg.names() == ["added_sq"]


# ------------------------------------------------------------------ strict / disabled
def test_strict_mode_raises_and_leaves_the_registry_unloaded(monkeypatch):
    good = FakeEntryPoint("good", plugin("plug_good_strict", sq("good_sq")))
    broken = FakeEntryPoint("broken", error=RuntimeError("kaput"))
    monkeypatch.setenv(STRICT_ENV, "1")
    reg = Registry(default_plugins=(), entry_points=lambda: [good, broken])
    with pytest.raises(PluginLoadError, match=r"plugin 'broken'.*RuntimeError: kaput.*strict") as e:
        reg.names()
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(PluginLoadError):  # still unloaded: every use reports it
        reg.get("good_sq")
    monkeypatch.setenv(STRICT_ENV, "0")
    names, messages = recorded(reg.names)
    assert names == ["good_sq"] and len(messages) == 1
    assert [f.name for f in reg.failures] == ["broken"]  # not one per attempt


def test_strict_flag_rejects_values_it_does_not_understand(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{STRICT_ENV}='maybe' is not understood"):
        Registry(default_plugins=(), entry_points=list).names()


def test_disabled_plugins_are_never_imported(monkeypatch):
    blocked = FakeEntryPoint("blocked", error=AssertionError("must not be imported"))
    other = FakeEntryPoint("other", plugin("plug_other", sq("other_sq")))
    monkeypatch.setenv(DISABLE_ENV, " blocked , builtin ")
    reg = Registry(entry_points=lambda: [blocked, other])
    names, messages = recorded(reg.names)
    assert names == ["other_sq"]  # the builtin plugin is blocked too
    assert messages == [] and blocked.loads == 0
    assert reg.plugin_manager.is_blocked("blocked")


def test_disabling_an_unknown_plugin_warns_with_the_installed_names():
    reg = fresh(FakeEntryPoint("real", plugin("plug_real", sq("real_sq"))), disabled=["raal"])
    names, messages = recorded(reg.names)
    assert names == ["real_sq"]
    assert len(messages) == 1
    assert "'raal', which is not a customloss plugin; installed plugins: real" in messages[0]


# ------------------------------------------------------- the default registry, for real
def test_import_customloss_is_lazy_and_torch_free():
    result = run_python(
        """
        import sys
        import customloss as cl
        assert "torch" not in sys.modules, "import customloss imported torch"
        assert "customloss.builtin" not in sys.modules, "plugins loaded at import"
        assert not cl.registry.default_registry._loaded
        names = cl.names()
        assert "customloss.builtin" in sys.modules
        assert "focal" in names
        assert "torch" not in sys.modules, "loading the plugins imported torch"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_public_api_is_reexported():
    assert cl.hookimpl is cl.hookspecs.hookimpl
    assert cl.PluginLoadWarning is PluginLoadWarning
    for name in ("names", "get", "register", "info", "hookimpl", "PluginLoadWarning"):
        assert name in cl.__all__
    assert cl.hookspecs.hookspec.project_name == "customloss"
    assert cl.hookimpl.project_name == "customloss"


# ------------------------------------------------------------------ review findings
def test_an_entry_point_resolving_to_none_is_one_skipped_plugin():
    good = FakeEntryPoint("good_after_none", plugin("plug_after_none", sq("after_none_sq")))
    reg = fresh(FakeEntryPoint("nothing", plugin=None), good)
    names, messages = recorded(reg.names)
    assert names == ["after_none_sq"]
    assert len(messages) == 1 and "plugin 'nothing'" in messages[0]
    assert "resolved to None" in messages[0]


def test_a_plugin_exiting_at_import_is_one_skipped_plugin():
    good = FakeEntryPoint("good_after_exit", plugin("plug_after_exit", sq("after_exit_sq")))
    reg = fresh(FakeEntryPoint("exits", error=SystemExit(3)), good)
    names, messages = recorded(reg.names)
    assert names == ["after_exit_sq"] and "plugin 'exits'" in messages[0]


def test_a_warning_raised_as_an_error_leaves_the_registry_unloaded():
    # under -W error (pytest filterwarnings=error) the PluginLoadWarning escapes; the
    # registry used to stay half loaded and blame 'builtin' on the next use
    broken = FakeEntryPoint("broken_w", error=ImportError("no dependency"))
    good = FakeEntryPoint("good_w", plugin("plug_good_w", sq("good_w_sq")))
    reg = fresh(broken, good, builtins=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PluginLoadWarning, match="plugin 'broken_w'"):
            reg.names()
    names, messages = recorded(reg.names)
    assert {"good_w_sq", "mse", "focal"} <= set(names)
    assert len(messages) == 1 and "plugin 'broken_w'" in messages[0]
    assert [f.name for f in reg.failures] == ["broken_w"]


def test_an_exception_whose_message_fails_is_still_reported():
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    good = FakeEntryPoint("good_u", plugin("plug_good_u", sq("good_u_sq")))
    reg = fresh(FakeEntryPoint("unprintable", error=Unprintable()), good)
    names, messages = recorded(reg.names)
    assert names == ["good_u_sq"]
    assert "plugin 'unprintable'" in messages[0] and "Unprintable" in messages[0]


def test_a_string_of_references_is_one_reference():
    loss = cl.define("refs", "(p - y)**2", inputs=("p", "y"), references="Huber (1964)")
    assert loss.references == ("Huber (1964)",)
    with pytest.raises(TypeError, match="inputs must be a sequence of two names"):
        cl.define("refs", "(p - y)**2", inputs="py")


def test_add_plugin_under_a_disabled_name_is_one_failure():
    reg = fresh(disabled=["mine"])
    with pytest.raises(PluginLoadError, match="the plugin name 'mine' is disabled"):
        reg.add_plugin(plugin("plug_mine", sq("mine_sq")), name="mine")
    assert "mine_sq" not in reg.names()
