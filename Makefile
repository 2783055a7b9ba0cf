# The two commands a fresh machine needs:  make demo  and  make test
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
PIP      = $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
DATA    ?= ../shared/data
HOME_DIR ?= artifacts

.PHONY: demo test install clean bench

$(BIN)/movierec: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	@touch $@

install: $(BIN)/movierec

## demo: data -> prepare -> train (bounded, reused) -> evaluate -> recommend, all on embedded defaults
demo: install
	$(BIN)/movierec demo --data-root $(DATA) --home $(HOME_DIR)

## test: the whole test suite (what .ci/run calls)
test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) $(HOME_DIR)
