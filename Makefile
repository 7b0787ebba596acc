# The two commands: `make run` (set up, train, serve) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/default

.PHONY: setup test run train bench-quality clean

# The venv is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

train: setup
	$(PY) -m training train --model mlp --out $(RUN_DIR)

run: train
	$(PY) -m training eval $(RUN_DIR)
	@echo "Trained and evaluated $(RUN_DIR). Serving is not built yet; see README."

bench-quality: setup
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) runs
