"""pytest plugin: the conformance kit over every registered loss.

Installed with customloss through the ``pytest11`` entry point (or loaded with
``pytest -p customloss.pytest_plugin``).  It does nothing until asked:

``pytest --customloss-conformance``
    adds one test per registered loss, ``customloss-conformance[<name>]``, running
    :func:`customloss.testing.check_loss` on ``customloss.get(name)``.  This is how a
    project (or a plugin distribution's CI) proves every loss it ships conforms.

The fixture ``customloss_name``
    any test that asks for it is parametrised over the registered names; the fixture
    ``registered_loss`` is ``customloss.get(customloss_name)``::

        def test_my_losses(registered_loss):
            check_loss(registered_loss)

Options: ``--customloss-pattern=GLOB`` limits the names (``fnmatch``, as
``customloss.names(pattern)``); ``--customloss-skip=CHECK`` (repeatable) switches a check
off, e.g. ``--customloss-skip=pickling``.  The same settings can live in the ini file as
``customloss_pattern`` and ``customloss_skip``.

Class-axis losses (``classes=True``) are checked like the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["ConformanceItem"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the command-line options and ini settings."""
    group = parser.getgroup("customloss", "customloss conformance kit")
    group.addoption(
        "--customloss-conformance",
        action="store_true",
        default=False,
        help="add a conformance test (customloss.testing.check_loss) per registered loss",
    )
    group.addoption(
        "--customloss-pattern",
        default=None,
        help="only registered losses whose name matches this fnmatch pattern",
    )
    group.addoption(
        "--customloss-skip",
        action="append",
        default=None,
        metavar="CHECK",
        help="switch a check_loss check off (repeatable), e.g. pickling",
    )
    parser.addini("customloss_pattern", "fnmatch pattern of the losses to check", default="")
    parser.addini("customloss_skip", "check_loss checks to switch off", type="args", default=[])


def _registry() -> Any:
    """The ``customloss`` module, with a clear error if it has no registry."""
    import customloss

    missing = [f for f in ("names", "get") if not callable(getattr(customloss, f, None))]
    if missing:
        raise pytest.UsageError(
            f"customloss {getattr(customloss, '__version__', '?')} has no loss registry "
            f"(customloss.{missing[0]}() is missing), so the customloss pytest plugin has no "
            "losses to parametrise over; upgrade customloss or drop --customloss-conformance"
        )
    return customloss


def _pattern(config: pytest.Config) -> str | None:
    return config.getoption("customloss_pattern") or config.getini("customloss_pattern") or None


def _skip(config: pytest.Config) -> list[str]:
    return list(config.getoption("customloss_skip") or []) + list(
        config.getini("customloss_skip") or []
    )


def registered_names(config: pytest.Config) -> list[str]:
    """The registered loss names selected by the options (sorted)."""
    return list(_registry().names(_pattern(config)))


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``customloss_name`` over the registered losses."""
    if "customloss_name" in metafunc.fixturenames:
        names = registered_names(metafunc.config)
        params = [pytest.param(n, id=n, marks=_marks(n)) for n in names]
        metafunc.parametrize("customloss_name", params)


@pytest.fixture
def registered_loss(customloss_name: str) -> Any:
    """``customloss.get(customloss_name)``: one registered loss per test."""
    return _registry().get(customloss_name)


@pytest.fixture
def customloss_skip(request: pytest.FixtureRequest) -> list[str]:
    """The checks switched off by ``--customloss-skip`` / ``customloss_skip``."""
    return _skip(request.config)


class ConformanceItem(pytest.Item):
    """``customloss-conformance[<name>]``: check_loss on one registered loss."""

    def __init__(self, *, loss_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_name = loss_name
        for mark in _marks(loss_name):
            self.add_marker(mark)

    def runtest(self) -> None:
        """Run the kit; a failure raises :class:`customloss.testing.ConformanceError`."""
        from customloss.testing import check_loss

        loss = _registry().get(self.loss_name)
        check_loss(loss, skip=_skip(self.config))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        """The conformance report itself, not a traceback into the kit."""
        from customloss.testing import ConformanceError

        if isinstance(excinfo.value, ConformanceError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "customloss-conformance", None, f"customloss-conformance[{self.loss_name}]"


def _conformance_items(session: pytest.Session) -> Iterator[ConformanceItem]:
    for name in registered_names(session.config):
        item_name = f"customloss-conformance[{name}]"
        yield ConformanceItem.from_parent(session, name=item_name, nodeid=item_name, loss_name=name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """With ``--customloss-conformance``, append one item per registered loss.

    First among the hooks, so that pytest's own ``-k``, ``-m`` and ``--deselect``
    (applied in this hook too) see the conformance items.
    """
    if config.getoption("customloss_conformance"):
        items.extend(_conformance_items(session))
