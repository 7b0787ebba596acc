# The two commands: `make run` (set up, train, export, serve) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/default
REGISTRY ?= registry
MODELS ?= mlp bigram-counts mlp-conditional
# `training train` options of models named otherwise than their model type (default: --model NAME).
# mlp-conditional: sex and decade on the SSA records of 1880-2017, steps sized to add at most 90 s to `make run`.
# One thread (training, eval, export): a small model gains little from two, and two OpenMP threads crawl when a neighbour holds a core.
TRAIN_ARGS_mlp-conditional ?= --model mlp --condition sex,decade --years 1880-2017 --steps 12000 --eval-every 12000 --no-plots
TRAIN_ENV_mlp-conditional ?= OMP_NUM_THREADS=1

.PHONY: setup test run train export best bench clean
.SECONDARY:  # keep the .trained stamps make would otherwise treat as intermediate

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

# Train each model on the default dataset (SSA 2017 names); an interrupted run is resumed.
$(RUN_DIR)/%/.trained: | setup
	$(TRAIN_ENV_$*) $(PY) -m training train $(or $(TRAIN_ARGS_$*),--model $*) --out $(RUN_DIR)/$* $(if $(wildcard $(RUN_DIR)/$*/train_state.pt),--resume)
	$(TRAIN_ENV_$*) $(PY) -m training eval $(RUN_DIR)/$*
	touch $@

# Publish each trained model into the registry (parity-checked) once.
$(REGISTRY)/%/LATEST: $(RUN_DIR)/%/.trained
	$(TRAIN_ENV_$*) $(PY) -m export $(RUN_DIR)/$* --registry $(REGISTRY) --name $*

train: $(foreach m,$(MODELS),$(RUN_DIR)/$(m)/.trained)
export: $(foreach m,$(MODELS),$(REGISTRY)/$(m)/LATEST)

run: export
	@echo "serving $(MODELS) from $(REGISTRY) on http://127.0.0.1:8000 (open it in a browser: the page at /, the API docs at /docs); Ctrl-C stops it"
	NAMEGEN_REGISTRY=$(REGISTRY) $(PY) -m serving

# The best model (README, "The best model"): wavenets with different seeds trained side by side, one
# thread each, then published as one ensemble named wavenet-ensemble, and one wavenet distilled from it
# (Hinton et al. 2015) published as wavenet-distilled; `make run` serves them beside the others. Ends by
# listing every published model's train/val/test NLL.
# DATA=../shared/data/names.txt trains on the lectures' file instead of the SSA names.
# The student is 512 wide in level 1: served, level 1 folds into the pair tables, so it costs
# what a 128-wide wavenet costs per step. Batches of 256 soft targets: val 1.9457 against 1.9503 at 128.
BEST_SEEDS ?= 1 2 3
BEST_DIR ?= runs/best
BEST_ARGS ?=  # more options for every training, e.g. --steps 300 for a quick trial
DISTILL_ARGS ?= --transfer-names 200000 --n-hidden-first 512 --batch-size 256  # `python -m training distill` options
best: setup
	@set -e; pids=""; for s in $(BEST_SEEDS); do \
	  out=$(BEST_DIR)/wavenet-$$s; [ -f $$out/.trained ] && continue; \
	  ( OMP_NUM_THREADS=1 $(PY) -m training train --model wavenet --seed $$s --out $$out --quiet --no-plots \
	      $(if $(DATA),--data $(DATA)) $(BEST_ARGS) $$([ -f $$out/train_state.pt ] && echo --resume) && touch $$out/.trained ) & \
	  pids="$$pids $$!"; done; \
	for p in $$pids; do wait $$p; done
	$(PY) -m training ensemble $(foreach s,$(BEST_SEEDS),$(BEST_DIR)/wavenet-$(s)) --out $(BEST_DIR)/ensemble --overwrite
	@# The student's stamp holds its recipe: other seeds or options distill it again.
	@out=$(BEST_DIR)/distilled; recipe="seeds $(strip $(BEST_SEEDS)); $(strip $(BEST_ARGS) $(DISTILL_ARGS))"; \
	[ "$$(cat $$out/.trained 2>/dev/null)" = "$$recipe" ] || { OMP_NUM_THREADS=1 $(PY) -m training distill \
	  $(BEST_DIR)/ensemble --out $$out --overwrite --quiet --no-plots $(BEST_ARGS) $(DISTILL_ARGS) && \
	  echo "$$recipe" > $$out/.trained; }
	$(PY) -m export $(BEST_DIR)/ensemble --registry $(REGISTRY) --name wavenet-ensemble
	$(PY) -m export $(BEST_DIR)/distilled --registry $(REGISTRY) --name wavenet-distilled
	$(PY) -m export list --registry $(REGISTRY)

bench: setup
	$(PY) bench/quality.py
	$(PY) bench/training_diagnostics.py
	$(PY) bench/export_speed.py
	$(PY) bench/serving_engine.py
	$(PY) bench/serving_steps.py
	$(PY) bench/serving_http.py
	$(PY) bench/serving_startup.py
	$(PY) bench/serving_overload.py
	$(PY) bench/serving_loadgen.py
	$(PY) bench/conditional.py

clean:
	rm -rf $(VENV) runs $(REGISTRY)
