# The README's commands. `make demo` and `make test` both create .venv and install first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The public zoo's torchvision (a CUDA wheel; testing/torchvision_compat.py makes it import on the
# CPU torch) and timm, without their dependencies so that pip cannot swap torch for a CUDA build.
ZOO_NO_DEPS := torchvision==0.28.0 timm==1.0.31

.PHONY: install demo test test-fast lint bench bench-int8 bench-bf16 bench-top1 zoo zoo-family clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned exactly: the CPU build on disk (a looser spec pulls CUDA wheels)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(ZOO_NO_DEPS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m deploytool.testing.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow and not cross and not gpu"

bench: $(STAMP)
	nice $(PY) benchmarks/run.py

# int8 packages of make bench's models against their fp32 packages and the peers' int8 (after
# make bench, which leaves the models and fp32 packages in build/bench); prints a table.
bench-int8: $(STAMP)
	nice $(PY) benchmarks/precision.py --precision int8

bench-bf16: $(STAMP)
	nice $(PY) benchmarks/precision.py --precision bf16

bench-top1: $(STAMP)
	nice $(PY) benchmarks/trained_top1.py

# Compile every public zoo model from .pt and .pt2 (about an hour on 2 cores); rows already in
# artifacts/zoo/results.json are kept (ZOO_ARGS=--again recompiles them); writes the table to
# docs/models-coverage.md.
zoo: $(STAMP)
	nice $(PY) -m deploytool.testing.coverage $(ZOO_ARGS)

# The same for members of the zoo's families that no test builds (about 40 minutes on 2 cores):
# docs/models-family-coverage.md.
zoo-family: $(STAMP)
	nice $(PY) -m deploytool.testing.coverage --family $(ZOO_ARGS)

clean:
	rm -rf artifacts build .pytest_cache
