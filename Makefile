VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,scheduler,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) scripts/train.py experiment=quickstart hydra.run.dir=$(RUN_DIR)
	$(PY) scripts/evaluate.py trained=[$(RUN_DIR)] output_dir=$(RUN_DIR)/evaluation
	@echo "run directory: $(RUN_DIR) (policy/, checkpoints/, metrics.json)"
	@echo "tables and plots: $(RUN_DIR)/evaluation (summary.md, plots/)"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(RUN_DIR)/tensorboard"

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest envs agents tests README.md

bench: $(STAMP)
	$(PY) scripts/bench_env.py

clean:
	rm -rf $(VENV)
