"""The code in docs/classes.md and docs/dsl.md runs and its assertions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(name: str) -> str:
    text = (DOCS / name).read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


@pytest.mark.parametrize("page", ["classes.md"])
def test_page_code_runs(page):
    code = _blocks(page)
    assert "assert" in code
    exec(compile(code, str(DOCS / page), "exec"), {"__name__": "docs_example"})
