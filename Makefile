# jaxnet: `make train` and `make test` set themselves up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: setup train test test-slow gradcheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)   ## the main job: train the default convnet on the embedded digits
	$(BIN)/jaxnet train $(ARGS)

test: $(STAMP)    ## the test suite (slow end-to-end runs are opt-in: make test-slow)
	$(BIN)/python -m pytest -q -n $(JOBS) $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

gradcheck: $(STAMP)   ## audit every op's hand-written backward pass
	$(BIN)/jaxnet gradcheck $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
