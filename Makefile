# Two commands on a fresh machine: `make demo` and `make test`.
# Another interpreter gets its own venv: `make test PYTHON=python3.13` uses .venv-python3.13.
PYTHON ?= python3
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
# The interpreter itself: on PATH, else a pyenv-installed one that is not the active version.
PYTHON_EXE = $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$(PYTHON) 2>/dev/null | tail -n 1)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo fleet-demo test test-fleet test-all lint soak sample-model bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON_EXE)" || { echo "Error: $(PYTHON) not found (on PATH or in pyenv)" >&2; exit 2; }
	$(PYTHON_EXE) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mlpersonalize.demo

# The fleet extra (Flower) lives in its own venv: flwr 1.42 pins typer < 0.21, which would
# change the click messages the main suite pins. Its tests skip in .venv and run here.
FLEET_VENV := $(VENV)-fleet
FLEET_STAMP := $(FLEET_VENV)/.installed

$(FLEET_STAMP): pyproject.toml
	@test -n "$(PYTHON_EXE)" || { echo "Error: $(PYTHON) not found (on PATH or in pyenv)" >&2; exit 2; }
	$(PYTHON_EXE) -m venv $(FLEET_VENV)
	$(FLEET_VENV)/bin/pip install --quiet --upgrade pip
	$(FLEET_VENV)/bin/pip install --quiet -e '.[dev,fleet]'
	touch $(FLEET_STAMP)

# Three devices on Flower (a SuperLink and three SuperNodes on 127.0.0.1) learn each other's labels.
fleet-demo: $(FLEET_STAMP)
	@$(FLEET_VENV)/bin/python -m mlpersonalize.fleet.demo --workdir fleet-demo

test-fleet: $(FLEET_STAMP)
	$(FLEET_VENV)/bin/python -m pytest -q $(FLEET_PYTEST) tests/test_fleet.py tests/test_fleet_cli.py tests/test_fleet_deploy.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
	$(MAKE) test-fleet FLEET_PYTEST='-m "not slow"'

test-all: $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) test-fleet

# The long random-SIGKILL loops: updates and rollbacks (P3), then `prepare --append` (P12).
# Bounded versions run in `make test`.
soak: $(STAMP)
	$(BIN)/python scripts/soak_kill.py --count 1000 --seconds 600 --prepare-count 30

lint: $(STAMP)
	$(BIN)/ruff check mlpersonalize tests benchmarks scripts
	$(BIN)/ruff format --check mlpersonalize tests benchmarks scripts
	$(BIN)/mypy

# The backbone pretrains on font glyphs of many writing systems (Debian font packages, installed
# here when missing) with PyTorch on the CPU (the `sample` extra); the runtime never imports torch.
sample-model: $(STAMP)
	$(BIN)/pip install --quiet -e '.[sample]'
	@missing="$$($(BIN)/python -m mlpersonalize.sample.glyphs)"; \
	if [ -n "$$missing" ]; then \
		echo "installing font packages: $$missing"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y --no-install-recommends $$missing; \
	fi
	rm -rf sample_models/doodles.new
	$(BIN)/python -m mlpersonalize.sample.pretrain --out sample_models/doodles.new
	rm -rf sample_models/doodles && mv sample_models/doodles.new sample_models/doodles

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf .venv .venv-* build dist .pytest_cache .ruff_cache .mypy_cache
