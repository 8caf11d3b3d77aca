# Two entry points for a fresh machine with Python 3.11 and make:
#   make run    create .venv, install pinned versions, run the main job on the offline default
#   make test   create/update .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick

.PHONY: run test install clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/netalchemy audit --profile $(PROFILE)

# Most tests compile many small programs once each: LLVM without optimisation compiles them about
# twice as fast (measured on 2 cores). Tests comparing bits across differently compiled programs
# (marker exact_bits) run at the default optimisation, as users' programs do.
test: $(VENV)/.installed
	XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0" $(BIN)/python -m pytest -q -n 2 -m "not exact_bits"
	$(BIN)/python -m pytest -q -n 2 -m exact_bits

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
