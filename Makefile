# asrflow: `make demo` runs the whole pipeline locally; `make test` runs the tests.
# Both install first (quick when already installed).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := espeak-ng flite sox libsndfile1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# pip, without its notes about this machine's extra package indexes that have no such package
pip_install = set -o pipefail; $(BIN)/python -m pip install -q $(1) 2>&1 | { grep -v '^WARNING: Location' || true; }

.PHONY: install test demo lint bench bench-quality corpus images clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	# the CPU wheel first, so that nothing pulls a multi-GB CUDA build of torch
	$(call pip_install,torch==2.13.0)
	$(call pip_install,-e '.[dev]')
	touch $(STAMP)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/asrflow run --local --output-dir demo-output

lint: install
	$(BIN)/ruff check components pipelines tests
	$(BIN)/ruff format --check components pipelines tests

bench: install
	$(BIN)/python -m tests.bench

bench-quality: install
	$(BIN)/python -m tests.bench_quality

corpus: install
	$(BIN)/python -m tests.corpus.generate --out tests/data/peoples_speech --train 300 --dev 60 --test 60 --seed 0

# Image references come from components/images.py (the same ones the pipeline compiles in);
# set ASRFLOW_REGISTRY, or ASRFLOW_DATA_IMAGE / ASRFLOW_TRAIN_IMAGE, to use your registry, and
# compile the pipeline with the same variables set.
images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (none reachable here)"; exit 1; }
	@set -e; read -r data train <<< "$$(python3 -c 'from components import images; print(images.DATA_IMAGE, images.TRAIN_IMAGE)')"; \
	echo "building $$data and $$train"; \
	docker build -f images/data/Dockerfile -t "$$data" .; \
	docker build -f images/train/Dockerfile -t "$$train" .; \
	docker push "$$data"; \
	docker push "$$train"

clean:
	rm -rf $(VENV) demo-output .pytest_cache
