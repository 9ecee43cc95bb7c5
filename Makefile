# Every target sets up what it needs: the virtual environment in .venv is created and filled on first use.
PYTHON ?= python3
VENV ?= .venv
# the CPU build available here; override for another build, e.g. make test TORCH="torch==2.14.1"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst =,_,$(subst ==,-,$(TORCH)))
# MONAI Label (the label extra) needs a torchvision matched to torch and numpy<2, so its tests run in a
# second environment inside .venv; PyPI's torchvision for torch 2.13 does not import beside the CPU wheel
LABEL_VENV ?= $(VENV)/label
LABEL_TORCH ?= torch==2.14.1 torchvision==0.29.1
LABEL_STAMP := $(LABEL_VENV)/.installed-label
# the golden parity vectors and the bundle metadata schema live in ../shared beside the clone: where it is present,
# a test that cannot find its file there fails instead of skipping (tests/conftest.py)
REQUIRE_SHARED := $(if $(wildcard ../shared/golden),MONAI_EXT_REQUIRE_SHARED=1)

.PHONY: demo test bench lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(LABEL_STAMP): setup.cfg pyproject.toml | $(STAMP)
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --disable-pip-version-check -q $(LABEL_TORCH)
	$(LABEL_VENV)/bin/python -m pip install --disable-pip-version-check -q -e ".[dev,label]" $(LABEL_TORCH)
	touch $(LABEL_STAMP)

demo: $(STAMP)
	$(BIN)/python -m monai_ext demo

# LABEL_TESTS=0 skips the MONAI Label tests and their environment (about 8 GB, see the README); CI runs them
LABEL_TESTS ?= 1
SKIP_LABEL := $(filter 0,$(LABEL_TESTS))

test: $(STAMP) $(if $(SKIP_LABEL),,$(LABEL_STAMP))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(REQUIRE_SHARED) $(BIN)/python -m pytest --ignore=tests/label
	$(if $(SKIP_LABEL),@echo "LABEL_TESTS=0: the MONAI Label tests (tests/label) did not run",MONAI_EXT_REQUIRE_LABEL=1 $(LABEL_VENV)/bin/python -m pytest tests/label)

bench: $(STAMP)
	$(BIN)/python -m monai_ext bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf demo_output bench_output .pytest_cache .ruff_cache
