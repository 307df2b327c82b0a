# The two commands of README.md: `make demo` and `make test`. Both work on a fresh machine:
# they install the Debian packages the platform and its tests use, create .venv, install the
# project and train the synthetic demo model when it is absent.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch: a CPU build pinned here (it lies on this machine's disk); the package metadata accepts
# any torch >= 2.4 so that GPU users can bring a CUDA build.
TORCH  ?= torch==2.13.0
# Debian packages: dcmtk (storescu/storescp/echoscu, the DICOM peers of the tests and benchmarks),
# dicom3tools (dciodvfy checks every SR/SEG we write), orthanc (the hospital PACS of the tests),
# chromium (Playwright drives it for the web-page tests), fonts for readable screenshots,
# orthanc-dicomweb (Orthanc's DICOMweb plugin: bench/dicomweb_metadata.py compares with it).
APT_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb chromium fonts-dejavu-core
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export CLINIC_DATA_DIR ?= $(CURDIR)/var

.PHONY: demo test install system-deps models lint bench clean

demo: install models
	$(BIN)/clinic demo

test: install models
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

install: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

models: install
	$(BIN)/clinic models train-demo

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .

bench: install models
	$(BIN)/python bench/cstore_ingest.py
	$(BIN)/python bench/e2e_latency.py

clean:
	rm -rf $(VENV) var test-artifacts
