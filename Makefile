# MedLedger developer commands. Everything a command needs is installed here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ML := $(VENV)/bin/medledger
DEMO_DIR ?= .demo

.PHONY: install demo down test lint typecheck unit integration bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "MedLedger needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: install
	$(ML) demo --dir $(DEMO_DIR)

down: install
	@if [ -d $(DEMO_DIR) ]; then $(ML) down --dir $(DEMO_DIR); else echo "no demo running"; fi

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: install
	$(VENV)/bin/mypy

test: install lint typecheck
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/run.py
	$(PY) bench/consortium.py
	$(PY) bench/storage.py
	$(PY) bench/audit.py
	$(PY) bench/access.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
