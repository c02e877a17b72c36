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

# dcmtk (echoscu, storescu, ...) and Orthanc (with its DICOMweb plugin): real DICOM peers
# for the integration tests and the benchmark, from Debian. Installed only when missing and
# we are root (as in CI); otherwise the tests that need them skip. Orthanc's system service
# is never started: a policy-rc.d that denies every start is in place during the install,
# and the service is disabled afterwards (tests run their own Orthanc with their config).
# pynetdicom puts Python tools of the same names in $(VENV)/bin: look for dcmtk's own
# (its --version names dcmtk) anywhere on PATH.
dicom-tools:
	@found=no; for d in $$(echo "$$PATH" | tr ':' ' '); do \
		if "$$d/echoscu" --version 2>/dev/null | grep -q dcmtk; then found=yes; break; fi; \
	done; \
	pkgs=""; \
	if [ $$found = no ]; then pkgs="dcmtk"; fi; \
	if [ ! -x /usr/sbin/Orthanc ] && ! command -v Orthanc >/dev/null 2>&1; then pkgs="$$pkgs orthanc"; fi; \
	if [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then pkgs="$$pkgs orthanc-dicomweb"; fi; \
	if [ -z "$$pkgs" ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$pkgs for the DICOM tests"; \
		prc=no; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && prc=yes; \
		fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; \
		rc=$$?; \
		if [ $$prc = yes ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
			systemctl disable --now orthanc >/dev/null 2>&1 || true; \
		fi; \
		exit $$rc; \
	else \
		echo "note:$$pkgs not installed and this is not root with apt-get:" \
			"the DICOM tests that need them will be skipped" \
			"(install them: sudo apt-get install dcmtk orthanc orthanc-dicomweb)"; \
	fi

bench: install
	$(PY) bench/run.py
	$(PY) bench/consortium.py
	$(PY) bench/storage.py
	$(PY) bench/audit.py
	$(PY) bench/access.py
	$(PY) bench/dicom_ingest.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
