"""The loss registry: names, lookup, registration, and plugin loading with fault isolation.

Training code asks the registry for a loss by name::

    import customloss as cl

    cl.names("*focal*")                 # ['focal']
    focal = cl.get("focal", gamma=1.0)  # a new Loss with other defaults
    cl.info("focal").distribution       # 'customloss'

Losses arrive through plugins: the built-in catalogue (:mod:`customloss.builtin`) is the
default plugin, and every installed distribution with an entry point in the
``customloss`` group is another.  Plugins are loaded once, lazily, on the first use of
the registry (never at ``import customloss``).  Each plugin's ``register_losses`` hook is
called on its own and its losses are committed all together, so a plugin whose import or
hook raises is skipped with a :class:`PluginLoadWarning` naming it, and neither hides the
plugins after it nor leaves half of its losses behind.

Environment:
    ``CUSTOMLOSS_STRICT_PLUGINS=1``: a broken plugin raises :class:`PluginLoadError`
    instead of warning (the registry then stays unloaded, and the next use tries again).
    ``CUSTOMLOSS_DISABLE_PLUGINS=name,name``: these plugins are blocked (pluggy's
    ``set_blocked``) and never imported; ``builtin`` names the built-in catalogue.
"""

from __future__ import annotations

import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import pluggy

from customloss import _validate, hookspecs
from customloss.loss import Loss, ParamDefault

__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "LossInfo",
    "PluginFailure",
    "PluginInfo",
    "PluginLoadError",
    "PluginLoadWarning",
    "Provider",
    "Registry",
    "UnknownLossError",
    "default_registry",
    "get",
    "info",
    "load_plugins",
    "names",
    "register",
]

#: Entry-point group in which distributions declare their customloss plugins.
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
#: Set to 1 to turn a plugin's load failure into an exception.
STRICT_ENV = "CUSTOMLOSS_STRICT_PLUGINS"
#: Comma-separated plugin names that are not loaded.
DISABLE_ENV = "CUSTOMLOSS_DISABLE_PLUGINS"
#: Plugins shipped with customloss: (plugin name, module), loaded before entry points.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (("builtin", "customloss.builtin"),)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _deferred_kind(obj: object) -> str | None:
    """``"an async def"``/``"a generator"`` when ``obj`` (a function, or what a call
    returned) defers its body, so calling it registers nothing; else ``None``."""
    import inspect

    if inspect.iscoroutinefunction(obj) or inspect.iscoroutine(obj):
        return "an async def"
    if inspect.isasyncgenfunction(obj) or inspect.isasyncgen(obj):
        return "an async generator"
    if inspect.isgeneratorfunction(obj) or inspect.isgenerator(obj):
        return "a generator"
    if inspect.isawaitable(obj):
        return "awaitable"
    return None


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or its hook raised; it was skipped."""


class PluginLoadError(RuntimeError):
    """A plugin failed to load and strict loading (``CUSTOMLOSS_STRICT_PLUGINS=1``) is on."""


class UnknownLossError(KeyError):
    """No loss is registered under the requested name (a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Provider:
    """Who registered a loss.

    Attributes:
        plugin: the plugin name (entry-point name, or ``"builtin"``); ``None`` for a
            loss registered in-process with :func:`register`.
        distribution: the installed distribution providing the plugin, if known.
        version: that distribution's version, if known.
        module: the plugin's module, or the module that called :func:`register`.
    """

    plugin: str | None
    distribution: str | None = None
    version: str | None = None
    module: str | None = None

    def __str__(self) -> str:
        if self.plugin is None:
            where = f" in module {self.module!r}" if self.module else ""
            return f"customloss.register(){where}"
        text = f"plugin {self.plugin!r}"
        if self.distribution:
            version = f" {self.version}" if self.version else ""
            text += f" (distribution {self.distribution}{version})"
        return text


@dataclass(frozen=True)
class LossInfo:
    """What the registry knows about one loss (see :func:`info`).

    Attributes:
        name: the registered name.
        plugin: providing plugin (``None`` for in-process registration).
        distribution: providing distribution, if known (``"customloss"`` for built-ins).
        version: that distribution's version, if known.
        module: the module the loss was registered from.
        doc: the loss's documentation.
        inputs: input names, prediction first.
        params: param name -> default (``None``: required at call time); read-only.
        references: literature references.
        expr: the elementwise loss as text (SymPy's ``str``).
    """

    name: str
    plugin: str | None
    distribution: str | None
    version: str | None
    module: str | None
    doc: str
    inputs: tuple[str, ...]
    params: Mapping[str, ParamDefault]
    references: tuple[str, ...]
    expr: str

    @property
    def summary(self) -> str:
        """The first line of :attr:`doc`."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


@dataclass(frozen=True)
class PluginInfo:
    """A plugin that loaded: its name, where it came from and the losses it registered."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    losses: tuple[str, ...]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped because its import, validation or hook raised."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    stage: str
    error: BaseException
    message: str


@dataclass(frozen=True)
class _Entry:
    loss: Loss
    provider: Provider


@dataclass(frozen=True)
class _Candidate:
    """A plugin to load: its name, how to import it and where it comes from."""

    name: str
    load: Callable[[], object]
    entry_point: str | None
    distribution: str | None
    version: str | None

    def describe(self) -> str:
        parts = []
        if self.entry_point:
            parts.append(f"entry point '{self.entry_point}' in group '{ENTRY_POINT_GROUP}'")
        if self.distribution:
            version = f" {self.version}" if self.version else ""
            parts.append(f"distribution {self.distribution}{version}")
        return ", ".join(parts) or "added in-process"


class _Registration:
    """The ``register`` callback handed to one plugin's hook: stages, never commits."""

    def __init__(self, registry: Registry, provider: Provider) -> None:
        self._registry = registry
        self._provider = provider
        self.staged: dict[str, _Entry] = {}

    def __call__(self, loss: Loss, *, replace: bool = False) -> Loss:
        entry = _make_entry(loss, self._provider)
        name = entry.loss.name
        existing = self.staged.get(name) or self._registry._entries.get(name)
        if existing is not None and not replace:
            raise ValueError(_clash_message(name, existing.provider, self._provider))
        self.staged[name] = entry
        return loss


def _make_entry(loss: object, provider: Provider) -> _Entry:
    if not isinstance(loss, Loss):
        raise TypeError(
            "register() expects a customloss.Loss (built with customloss.loss or "
            f"customloss.define), got {type(loss).__name__}: {loss!r}"
        )
    # A private copy: changing the caller's object later cannot change the registry.
    return _Entry(loss.with_defaults(), provider)


def _clash_message(name: str, existing: Provider, new: Provider) -> str:
    return (
        f"loss {name!r} is already registered by {existing}; {new} cannot register it "
        "again (pass replace=True to override it on purpose)"
    )


def _env_flag(variable: str) -> bool:
    raw = os.environ.get(variable, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{variable}={raw!r} is not understood; use 1 (on) or 0 (off)")


def _env_names(variable: str) -> list[str]:
    return [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]


def _entry_point_candidates(entry_points: Iterable[Any]) -> list[_Candidate]:
    out = []
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None) if dist is not None else None
        if dist is not None and not dist_name:
            dist_name = dist.metadata["Name"]
        out.append(
            _Candidate(
                name=ep.name,
                load=ep.load,
                entry_point=f"{ep.name} = {ep.value}",
                distribution=dist_name,
                version=dist.version if dist is not None else None,
            )
        )
    out.sort(key=lambda c: (c.name, c.distribution or ""))
    return out


def _warn(message: str) -> None:
    """Warn with :class:`PluginLoadWarning`, attributed to the first caller outside this module."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PluginLoadWarning, stacklevel=level)


def _caller_module() -> str | None:
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


class Registry:
    """A set of named losses, filled from plugins on first use.

    The module-level functions (:func:`names`, :func:`get`, :func:`register`,
    :func:`info`) use :data:`default_registry`; build a fresh ``Registry`` to get an
    isolated one (tests, applications that want their own catalogue).

    Args:
        default_plugins: ``(name, module)`` pairs loaded first; default the built-ins.
        entry_points: a callable returning the entry points to load (objects with
            ``name``, ``value``, ``load()`` and optionally ``dist``); default the
            installed distributions' entry points in the ``customloss`` group.
        strict: raise instead of warn when a plugin fails; default from
            ``CUSTOMLOSS_STRICT_PLUGINS``.
        disabled: plugin names to block; default from ``CUSTOMLOSS_DISABLE_PLUGINS``.

    The environment is read when the plugins load, not when the registry is built.
    """

    def __init__(
        self,
        *,
        default_plugins: Sequence[tuple[str, str]] = DEFAULT_PLUGINS,
        entry_points: Callable[[], Iterable[Any]] | None = None,
        strict: bool | None = None,
        disabled: Iterable[str] | None = None,
    ) -> None:
        self._default_plugins = tuple(default_plugins)
        self._entry_points = entry_points
        self._strict = strict
        self._disabled = None if disabled is None else tuple(disabled)
        self._lock = threading.RLock()
        self._loaded = False
        self._loading_thread: int | None = None
        self._entries: dict[str, _Entry] = {}
        self._plugins: dict[str, PluginInfo] = {}
        self._failures: list[PluginFailure] = []
        self._pm = self._new_plugin_manager()

    @staticmethod
    def _new_plugin_manager() -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        return pm

    # -- loading ----------------------------------------------------------------
    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The underlying pluggy ``PluginManager`` (plugins loaded first)."""
        self.load_plugins()
        return self._pm

    def load_plugins(self) -> None:
        """Load the default plugins and the entry-point plugins, once.

        Called by every registry method; calling it again does nothing.

        Raises:
            PluginLoadError: a plugin failed and strict loading is on.
            ValueError: ``CUSTOMLOSS_STRICT_PLUGINS`` has a value that is not a boolean.
        """
        if self._loaded:
            return
        with self._lock:
            # A plugin's import or hook may read the registry: it sees what has
            # been committed so far (the built-ins always load first).
            if self._loaded or self._loading_thread == threading.get_ident():
                return
            self._loading_thread = threading.get_ident()
            try:
                self._load()
            finally:
                self._loading_thread = None

    def _load(self) -> None:
        self._failures.clear()
        strict = _env_flag(STRICT_ENV) if self._strict is None else self._strict
        disabled = _env_names(DISABLE_ENV) if self._disabled is None else list(self._disabled)
        for name in disabled:
            self._pm.set_blocked(name)
        candidates = [
            _Candidate(
                name=name,
                load=lambda module=module: import_module(module),
                entry_point=None,
                distribution="customloss",
                version=_customloss_version(),
            )
            for name, module in self._default_plugins
        ]
        if self._entry_points is None:
            from importlib import metadata  # not at import time: it costs ~50 ms

            found = metadata.entry_points(group=ENTRY_POINT_GROUP)
        else:
            found = self._entry_points()
        candidates += _entry_point_candidates(found)
        try:
            for candidate in candidates:
                if not self._pm.is_blocked(candidate.name):
                    self._load_one(candidate, strict=strict)
        except BaseException:
            # Strict (PluginLoadError), or anything else escaping (a PluginLoadWarning
            # under -W error, KeyboardInterrupt): leave the registry unloaded, so the
            # next use loads again and reports the problem, not a half-loaded state.
            self._entries.clear()
            self._plugins.clear()
            self._pm = self._new_plugin_manager()
            raise
        unknown = sorted(set(disabled) - {c.name for c in candidates})
        if unknown:
            known = ", ".join(sorted({c.name for c in candidates})) or "none"
            _warn(
                f"{DISABLE_ENV} names {', '.join(map(repr, unknown))}, which "
                f"{'is not a' if len(unknown) == 1 else 'are not'} customloss "
                f"plugin{'' if len(unknown) == 1 else 's'}; installed plugins: {known}"
            )
        self._loaded = True

    def _load_one(self, candidate: _Candidate, *, strict: bool, plugin: object = None) -> None:
        """Import, validate and run one plugin; commit its losses all together or none."""
        if self._pm.has_plugin(candidate.name):
            other = self._plugins.get(candidate.name)
            owner = f" by {other.distribution}" if other and other.distribution else ""
            self._fail(
                candidate,
                "registering it",
                ValueError(f"a plugin named {candidate.name!r} is already loaded{owner}"),
                strict,
            )
            return
        if plugin is None:
            try:
                plugin = candidate.load()
            except (Exception, SystemExit) as exc:  # a plugin's sys.exit() at import too
                self._fail(candidate, "importing it", exc, strict)
                return
            if plugin is None:
                problem = TypeError("the entry point resolved to None, not a module or object")
                self._fail(candidate, "importing it", problem, strict)
                return
        try:
            registered = self._pm.register(plugin, name=candidate.name)
        except Exception as exc:  # pluggy.PluginValidationError, ValueError
            self._fail(candidate, "registering it with pluggy", exc, strict)
            return
        if registered is None:  # pluggy: the name is blocked
            problem = ValueError(f"the plugin name {candidate.name!r} is disabled")
            self._fail(candidate, "registering it", problem, strict)
            return
        impls = [
            impl for impl in self._pm.hook.register_losses.get_hookimpls() if impl.plugin is plugin
        ]
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        provider = Provider(candidate.name, candidate.distribution, candidate.version, module)
        problem = None
        if not impls:
            problem = (
                f"module {module!r} has no register_losses hook implementation "
                "(decorate it with @customloss.hookimpl)"
            )
        elif any(impl.hookwrapper or impl.wrapper for impl in impls):
            problem = "its register_losses is a hook wrapper; it must be a plain hookimpl"
        elif kind := next(filter(None, (_deferred_kind(impl.function) for impl in impls)), None):
            # its body would never run: nothing registered, only a "never awaited" warning
            problem = (
                f"its register_losses is {kind}; it must be a plain function that calls "
                "register(...)"
            )
        if problem is not None:
            self._pm.unregister(plugin)
            self._fail(candidate, "checking it", TypeError(problem), strict)
            return
        registration = _Registration(self, provider)
        try:
            for impl in impls:
                # Each plugin is called on its own: one pluggy hook call would stop
                # at the first plugin that raises and hide the ones after it.
                arguments = {"register": registration}
                result = impl.function(*(arguments[a] for a in impl.argnames))
                if _deferred_kind(result):  # e.g. a decorated async function
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    raise TypeError(
                        f"its register_losses returned {type(result).__name__!s}, whose body "
                        "never runs; it must be a plain function that calls register(...)"
                    )
        except Exception as exc:
            self._pm.unregister(plugin)
            self._fail(candidate, "calling its register_losses hook", exc, strict)
            return
        self._entries.update(registration.staged)
        self._plugins[candidate.name] = PluginInfo(
            candidate.name,
            candidate.distribution,
            candidate.version,
            candidate.entry_point,
            tuple(registration.staged),
        )

    def _fail(self, candidate: _Candidate, stage: str, exc: BaseException, strict: bool) -> None:
        try:
            text = str(exc)
        except Exception:  # a plugin's exception whose __str__ raises
            text = "(its message could not be printed)"
        message = (
            f"customloss plugin {candidate.name!r} ({candidate.describe()}) was skipped: "
            f"{stage} raised {type(exc).__name__}: {text}"
        )
        self._failures.append(
            PluginFailure(
                candidate.name,
                candidate.distribution,
                candidate.version,
                candidate.entry_point,
                stage,
                exc,
                message,
            )
        )
        if strict:
            raise PluginLoadError(
                f"{message} (strict loading is on; set {DISABLE_ENV}={candidate.name} to skip it)"
            ) from exc
        _warn(
            f"{message}. The other plugins are loaded; set {DISABLE_ENV}={candidate.name} "
            f"to skip it without this warning, or {STRICT_ENV}=1 to make it an error."
        )

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (e.g. a module with a ``register_losses`` hookimpl).

        Its losses are added all together, or none if its hook raises.

        Args:
            plugin: the plugin object.
            name: the plugin name; default the module's (or object's) ``__name__``.

        Raises:
            PluginLoadError: the plugin is invalid or its hook raised (the error is
                chained as ``__cause__``).
        """
        self.load_plugins()
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        with self._lock:
            self._refuse_while_loading("add_plugin")
            candidate = _Candidate(name, lambda: plugin, None, None, None)
            self._load_one(candidate, strict=True, plugin=plugin)

    def plugins(self) -> list[PluginInfo]:
        """The plugins that loaded, in load order (built-ins first)."""
        self.load_plugins()
        return list(self._plugins.values())

    @property
    def failures(self) -> list[PluginFailure]:
        """The plugins that were skipped, with the error each raised."""
        self.load_plugins()
        return list(self._failures)

    def _refuse_while_loading(self, what: str) -> None:
        if self._loading_thread == threading.get_ident():
            raise RuntimeError(
                f"customloss.{what}() was called while plugins are loading (from a plugin's "
                "import or hook); register losses with the `register` callback that "
                "register_losses receives"
            )

    # -- the public operations ------------------------------------------------------
    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names of the registered losses.

        Args:
            pattern: an ``fnmatch`` pattern (``"*focal*"``, ``"bce*"``), matched
                case-sensitively; default all names.

        Returns:
            The matching names, sorted.
        """
        import fnmatch

        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
        self.load_plugins()
        all_names = sorted(self._entries)
        if pattern is None:
            return all_names
        return [n for n in all_names if fnmatch.fnmatchcase(n, pattern)]

    def _entry(self, name: object) -> _Entry:
        if not isinstance(name, str):
            raise TypeError(f"loss name must be a string, got {type(name).__name__}: {name!r}")
        self.load_plugins()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownLossError(self._unknown_message(name))
        return entry

    def _unknown_message(self, name: str) -> str:
        import difflib

        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        lowered = [n for n in known if n.lower() == name.lower() and n not in close]
        close = lowered + close
        if close:
            quoted = [repr(c) for c in close]
            options = (
                quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
            )
            message = f"unknown loss {name!r}; did you mean {options}?"
        else:
            message = (
                f"unknown loss {name!r}; no registered loss has a similar name "
                f"(customloss.names() lists all {len(known)})"
            )
        if self._failures:
            failed = ", ".join(repr(f.name) for f in self._failures)
            message += f"; note that plugin(s) {failed} failed to load (see PluginLoadWarning)"
        return message

    def get(self, name: str | Mapping[str, Any] | Loss, **defaults: Any) -> Loss:
        """A new ``Loss`` for a registered name, optionally with other param defaults.

        Like ``keras.losses.get``, ``name`` may also be a config dict (from
        ``Loss.to_config()``, a YAML/Hydra config, ...) or a ``Loss``.

        The registered loss never changes: each call returns a fresh object.

        Args:
            name: the registered name.
            **defaults: new default values for some of the loss's params.

        Returns:
            A new :class:`~customloss.Loss`.

        Raises:
            KeyError: no such loss (an :class:`UnknownLossError`; the message suggests
                close names).
            TypeError: a keyword is not a param of the loss (the message lists them).
        """
        from customloss.loss import Loss

        if isinstance(name, Loss):  # like keras.losses.get: a loss passes through
            loss = name
        elif isinstance(name, Mapping):  # a config dict (Loss.to_config, YAML, ...)
            from customloss.serialize import from_config

            loss = from_config(name)
            name = loss.name
        else:
            loss = self._entry(name).loss
        known = [
            *loss.params,
            *loss.options,
            *loss.variants,
        ]  # options: e.g. ignore_index of class losses
        if not any(k in loss.variants for k in defaults):
            # (a variant, e.g. base="focal", brings params of its own: with_defaults
            # checks the rest against the variant)
            _validate.check_param_names(name, defaults, known, phrase="has no param")
        return loss.with_defaults(**defaults)

    def register(self, loss: Loss, *, replace: bool = False) -> Loss:
        """Register ``loss`` under ``loss.name`` in this process.

        The plugins are loaded first, so a clash with a built-in or plugin loss is
        detected.  Usable as a decorator above ``@customloss.loss(...)``.

        Args:
            loss: the loss to register (a private copy is stored).
            replace: override an existing loss of the same name on purpose.

        Returns:
            ``loss`` itself.

        Raises:
            TypeError: ``loss`` is not a ``Loss``.
            ValueError: the name is taken and ``replace`` is false; the message names
                the loss and both providers.
        """
        self.load_plugins()
        with self._lock:
            self._refuse_while_loading("register")
            registration = _Registration(self, Provider(None, module=_caller_module()))
            registration(loss, replace=replace)
            self._entries.update(registration.staged)
        return loss

    def info(self, name: str) -> LossInfo:
        """What the registry knows about a loss: provider, doc, params, references.

        Raises:
            KeyError: no such loss (the message suggests close names).
        """
        entry = self._entry(name)
        loss, provider = entry.loss, entry.provider
        return LossInfo(
            name=loss.name,
            plugin=provider.plugin,
            distribution=provider.distribution,
            version=provider.version,
            module=provider.module,
            doc=loss.doc,
            inputs=tuple(loss.inputs),
            params=types.MappingProxyType(dict(loss.params)),
            references=tuple(loss.references),
            expr=str(loss.expr),
        )

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        state = f"{len(self._entries)} losses" if self._loaded else "plugins not loaded yet"
        return f"<customloss.Registry: {state}>"


def _customloss_version() -> str | None:
    module = sys.modules.get("customloss")
    return getattr(module, "__version__", None)


#: The registry behind :func:`names`, :func:`get`, :func:`register` and :func:`info`.
default_registry = Registry()


def load_plugins() -> None:
    """Load the plugins of the default registry now (otherwise done on first use)."""
    default_registry.load_plugins()


def names(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally filtered.

    Args:
        pattern: an ``fnmatch`` pattern such as ``"*focal*"``; default all names.

    Returns:
        The matching names, sorted.
    """
    return default_registry.names(pattern)


def get(name: str | Mapping[str, Any] | Loss, **defaults: Any) -> Loss:
    """A new ``Loss`` for a registered name (or a config dict, or a ``Loss``),
    optionally with other param defaults.

    Args:
        name: the registered name, e.g. ``"focal"``.
        **defaults: new default values for some params, e.g. ``gamma=1.0``.

    Returns:
        A new :class:`~customloss.Loss`; the registered one never changes.

    Raises:
        KeyError: unknown name (``unknown loss 'focall'; did you mean 'focal'?``).
        TypeError: unknown param (the message lists the valid params).
    """
    return default_registry.get(name, **defaults)


def register(loss: Loss, *, replace: bool = False) -> Loss:
    """Register a loss in this process (plugins are loaded first to detect clashes).

    Args:
        loss: a :class:`~customloss.Loss`.
        replace: override an existing loss of the same name on purpose.

    Returns:
        ``loss`` itself, so this works as a decorator above ``@customloss.loss(...)``.

    Raises:
        ValueError: the name is taken; the message names the loss and both providers.
    """
    return default_registry.register(loss, replace=replace)


def info(name: str) -> LossInfo:
    """Provider (plugin, distribution), doc, inputs, params and references of a loss.

    Args:
        name: the registered name.

    Returns:
        A :class:`LossInfo`.
    """
    return default_registry.info(name)
