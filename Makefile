# One-command entry points; each creates its own virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-quick bench docs lint format clean

$(STAMP): pyproject.toml constraints.txt Makefile $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[torch,dev,cli,plot,docs]"
	@for d in plugins/*/; do \
	  if [ -f "$$d/pyproject.toml" ] && [ -z "$$(echo $$d | grep broken)" ]; then \
	    $(PY) -m pip install -q -c constraints.txt --no-deps -e "$$d" || exit 1; \
	  fi; \
	done
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-quick: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check customloss tests benchmarks examples plugins docs/gen_catalogue.py
	$(PY) -m ruff format --check customloss tests benchmarks examples plugins docs/gen_catalogue.py

format: $(STAMP)
	$(PY) -m ruff format customloss tests benchmarks examples plugins docs/gen_catalogue.py
	$(PY) -m ruff check --fix customloss tests benchmarks examples plugins docs/gen_catalogue.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
