# Fresh-machine entry points (README's first lines). Each creates .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
export MUJOCO_GL ?= egl

.PHONY: install demo lint test bench readme-figures clean

$(BIN)/cdred: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Exact pin: a range would pull a multi-GB CUDA build; on a GPU machine install the CUDA torch first.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	@touch $@

# Test extras: pytest, hypothesis, ruff, import-linter, and Ray for the executor tests (a local Ray
# instance per test).
$(VENV)/.test-deps: $(BIN)/cdred
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	@touch $@

install: $(BIN)/cdred

demo: install
	$(BIN)/cdred pipeline mw:reach --preset quickstart

# ruff (errors, function size and complexity: ruff.toml), then the layer contracts (.importlinter) on the
# package as installed (stages/ and datasets/ live under cdred_pipeline there), built into .venv/lint.
lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	rm -rf $(VENV)/lint build
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --target $(VENV)/lint .
	cd $(VENV)/lint && ../bin/lint-imports ../../.importlinter --no-cache

test: lint
	$(BIN)/pytest tests -q -rs

# The speed set on CPU with short settings (benchmarks/README.md: what each prints, and the long forms).
bench: install
	$(BIN)/python benchmarks/speed/agent_speed.py --presets tiny small --devices cpu --threads 1
	$(BIN)/python benchmarks/speed/train_loop_speed.py --task dmc:cartpole-balance --preset small --no-plan --steps 1500 --threads 1
	$(BIN)/python benchmarks/speed/many_runs.py --runs 1 2 --task dmc:cartpole-balance --preset small --no-plan --steps 1500
	$(BIN)/python benchmarks/speed/vector_eval.py --presets small --num-envs 1 8
	$(BIN)/python benchmarks/speed/vector_collect.py --presets small --num-envs 1 8
	$(BIN)/python benchmarks/speed/render_speed.py --episodes 8
	$(BIN)/python benchmarks/speed/dataset_io.py --steps 200000 --repeats 3 --episodes 300

# Every figure the README quotes (demo table and times, preset sizes, test time) from the current code,
# with the machine's load: results/readme-figures.md.
readme-figures: $(VENV)/.test-deps
	$(BIN)/python benchmarks/readme_figures.py --tests

clean:
	rm -rf $(VENV) build *.egg-info
