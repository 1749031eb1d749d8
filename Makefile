# Everything the project needs, installed into .venv from the project's own files.
# torch is installed first and pinned: 2.13.0 is the CPU wheel; an unpinned torch
# (asked for by sentence-transformers) would pull several GB of CUDA packages.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= out/demo
# pytest-xdist workers (the test extra) spread the suite over two cores: each test file runs on one
# worker, and every test that starts Ray on the same one (tests/conftest.py); TEST_WORKERS=0: serially.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[semantic,trainers,ray,test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/packprep pack --strategy icp examples/corpus $(DEMO_OUT) --overwrite
	$(VENV)/bin/packprep inspect $(DEMO_OUT)

test: $(STAMP)
	$(PYTEST)

# The edit loop: everything but the tests marked slow (SIGKILL, Ray, MiniLM beyond one small
# embed, training, the README walkthrough, DataLoader workers, a few larger inputs); it still runs
# every stage but the static embedder, both packings, each format and the CLI's errors.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) out .pytest_cache
