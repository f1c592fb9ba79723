# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e '.[eval,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) dinov2/train/train.py --config-file configs/demo.yaml --output-dir outputs/demo

test: $(STAMP)
	$(PY) -m ruff check dinov2 tests scripts
	# pytest exits with 5 when it collects no tests: that fails too.
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check dinov2 tests scripts

clean:
	rm -rf outputs .pytest_cache .ruff_cache
