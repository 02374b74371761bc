# Each target sets up .venv itself, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of torch on machines without a GPU; users with CUDA install their own torch first.
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench results setup clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/conceptvault demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) bench/hide_step.py

# docs/results.md from the records in bench/results/ (a new demo run: bench/render_results.py --add demo-out/demo-star.json)
results: setup
	$(PY) bench/render_results.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
