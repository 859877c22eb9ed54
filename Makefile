VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) scripts/simulate.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest envs agents tests README.md

bench: $(STAMP)
	$(PY) scripts/bench_env.py

clean:
	rm -rf $(VENV)
