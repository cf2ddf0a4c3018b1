"""The ``customloss`` console script and ``python -m customloss``.

A launcher apart from :mod:`customloss.cli`, which needs click and rich at import:
without the ``cli`` extra the command says so in one line (exit status 2) instead of
a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_CLI_MODULES = ("click", "rich")


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`customloss.cli.main`; returns the exit status."""
    try:
        from customloss import cli
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in _CLI_MODULES:
            raise
        sys.stderr.write(
            f"customloss: error: the command line needs {exc.name.split('.')[0]}, which is "
            "not installed: pip install 'customloss[cli]'\n"
        )
        return 2
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
