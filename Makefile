# fsseg: every target installs what it needs into .venv first (plain pip, no uv/poetry).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
# the exact dependency set the tests passed with (pyproject.toml keeps ranges)
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=

.PHONY: install lock test test-fast demo lint bench ui clean browser-deps selfcheck

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev,demo,browser]"
	touch $(STAMP)

# Re-resolve the dependency set from pyproject.toml's ranges in a fresh venv and freeze it into
# constraints.txt (its comment header kept); then `make test` checks the new set.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev,demo,browser]"
	grep '^#' $(CONSTRAINTS) > $(CONSTRAINTS).new
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# The web-demo browser test drives Debian's chromium; tests/browser_setup.sh installs it when missing.
test: install
	sh tests/browser_setup.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

# everything but the tests marked slow (whole training jobs, the quick demo and bench): minutes on 2 cores
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) -m fsseg.demo

lint: install
	$(VENV)/bin/ruff check fsseg data_modules callbacks tests

# python -m bench: speed/roofline on full-size models; bench.distillfss: specialised vs episodic with the trained
# demo model (skipped with a note when `make demo` has not run: it never fakes figures)
bench: install
	$(PY) -m bench
	@if [ -f outputs/demo/fewshot/checkpoints/best.ckpt ]; then $(PY) -m bench.distillfss; \
	else echo "bench.distillfss skipped: run 'make demo' first (it needs the trained demo model)"; fi

# fit/test/predict of the small model on the CPU, DDP on 2 gloo processes, and on every CUDA GPU in 32,
# bf16-mixed and 16-mixed (SELFCHECK_ARGS=--full-size: the full-size FS-DINO step and inference, GPU)
SELFCHECK_ARGS ?=
selfcheck: install
	$(PY) -m fsseg.cli selfcheck $(SELFCHECK_ARGS)

UI_ARGS ?= --small
ui: install
	$(VENV)/bin/fsseg demo-ui --host 127.0.0.1 --port 7860 $(UI_ARGS)

clean:
	rm -rf runs outputs .pytest_cache $(LOCK_VENV)
