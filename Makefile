# jaxnet: `make train` and `make test` set themselves up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: setup bytecode train test test-slow gradcheck bench race cpu-fast clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	@$(MAKE) --no-print-directory bytecode
	@touch $(STAMP)

# pip byte-compiles file by file on one core; compileall -j 0 does the same work on every core
# (files that are not Python 3 source, e.g. some packages' test fixtures, are skipped as pip skips them)
bytecode:
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true

setup: $(STAMP)

# Each `make train` is a fresh run into its --out (runs/digits) unless ARGS asks to --resume.
train: $(STAMP)   ## the main job: train the default convnet on the embedded digits
	$(BIN)/jaxnet train $(if $(findstring --resume,$(ARGS)),,--overwrite) $(ARGS)

# The project's own sources are byte-compiled first (incrementally): every test worker and every CLI
# subprocess the tests start then loads them instead of compiling them again (PYTHONDONTWRITEBYTECODE
# environments never cache them)
test: $(STAMP)    ## the test suite (slow end-to-end runs are opt-in: make test-slow)
	@$(BIN)/python -m compileall -q -j 0 jaxnet experiments tests > /dev/null 2>&1 || true
	$(BIN)/python -m pytest -q -n $(JOBS) $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

gradcheck: $(STAMP)   ## audit every op's hand-written backward pass
	$(BIN)/jaxnet gradcheck $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev,bench]' \
	  || echo "bench: torch could not be installed; the PyTorch rows will be skipped"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev,cpu-fast]' \
	  || echo "bench: oneDNN could not be installed; the oneDNN rows will be skipped"
	@$(MAKE) --no-print-directory bytecode
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)   ## side-by-side benchmarks (median of interleaved blocks), writes bench.json
	$(BIN)/jaxnet bench --json $(ARGS) > bench.json
	$(BIN)/python -c "import json, jaxnet.bench as b; print(b.format_report(json.load(open('bench.json'))))"

# Time to 85% CIFAR-10 accuracy, jaxnet against the same run in PyTorch (~25 min; needs a CIFAR-10 copy:
# ARGS="--data-dir PATH" or $$JAXNET_CIFAR10_DIR)
race: $(BENCH_STAMP)   ## experiments.cifar_race with torch and the oneDNN kernel installed
	$(BIN)/python -m experiments.cifar_race $(ARGS)

# Optional: the oneDNN CPU convolution kernel (jaxnet.ops.onednn). make test / make train do not need it.
cpu-fast: $(STAMP)   ## installs the cpu-fast extra, builds the kernel, says whether it loaded
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev,cpu-fast]' \
	  || echo "cpu-fast: oneDNN could not be installed; jaxnet keeps XLA's convolution"
	JAXNET_ONEDNN=1 $(BIN)/python -c "from jaxnet.ops import onednn; i = onednn.info(); \
	  print('oneDNN kernel: ' + (f\"loaded (oneDNN {i['version']}, {i['path']})\" if i['ok'] else f\"not used ({i['reason']})\"))"
