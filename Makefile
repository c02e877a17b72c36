# MedLedger developer commands. Everything a command needs is installed here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ML := $(VENV)/bin/medledger
DEMO_DIR ?= .demo

.PHONY: install demo down test lint typecheck unit integration bench clean dicom-tools

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

test: install lint typecheck dicom-tools
	$(VENV)/bin/pytest -q

# dcmtk (echoscu, ...): real DICOM peers for the integration tests, from Debian. Installed
# only when missing and we are root (as in CI); otherwise the tests that need it skip.
# pynetdicom puts Python tools of the same names in $(VENV)/bin: look for dcmtk's own
# (its --version names dcmtk) anywhere on PATH.
dicom-tools:
	@found=no; for d in $$(echo "$$PATH" | tr ':' ' '); do \
		if "$$d/echoscu" --version 2>/dev/null | grep -q dcmtk; then found=yes; break; fi; \
	done; \
	if [ $$found = yes ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dcmtk (echoscu) for the DICOM tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dcmtk; \
	else \
		echo "note: dcmtk (echoscu) is not installed and this is not root with apt-get:" \
			"the DICOM tests that need it will be skipped (install it: sudo apt-get install dcmtk)"; \
	fi

bench: install
	$(PY) bench/run.py
	$(PY) bench/consortium.py
	$(PY) bench/storage.py
	$(PY) bench/audit.py
	$(PY) bench/access.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
