# asrflow: `make demo` runs the whole pipeline locally; `make test` runs the tests (what CI runs),
# `make test-fast` the unit tests only (under a minute).
# Both install first (quick when already installed).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := espeak-ng flite sox libsndfile1
# the extras of pyproject.toml that `make install` installs: the images' and the tests'
EXTRAS := data,train,dev
IMAGE_PACKAGES := podman buildah skopeo debootstrap runc uidmap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# pip, without its notes about this machine's extra package indexes that have no such package
pip_install = set -o pipefail; $(BIN)/python -m pip install -q $(1) 2>&1 | { grep -v '^WARNING: Location' || true; }

.PHONY: install test test-fast architecture demo lint bench bench-quality bench-finetune bench-lm pretrained chaos corpus images images-local test-images demo-container lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	# the CPU wheel first, so that nothing pulls a multi-GB CUDA build of torch
	$(call pip_install,torch==2.13.0)
	# every package at the version the images have: requirements.lock as constraints, without
	# its hashes (pip takes no hashes in a constraint file; the images check them)
	sed -e '/--hash=/d' -e 's/ \\$$//' requirements.lock > $(VENV)/constraints.txt
	$(call pip_install,-c $(VENV)/constraints.txt -e '.[$(EXTRAS)]')
	touch $(STAMP)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The unit tests: everything but what tests/conftest.py marks integration (NeMo training, the
# DAG, the GCS emulator, speech synthesis, killed or raced CLI runs).
test-fast: install
	$(BIN)/pytest -m 'not integration and not slow and not gpu and not images' $(PYTEST_ARGS)

# The import graph in ARCHITECTURE.md, from the code (a test fails when it is out of date).
architecture: install
	$(BIN)/python -m tests.architecture --write ARCHITECTURE.md

demo: install
	$(BIN)/asrflow run --local --output-dir demo-output

lint: install
	$(BIN)/ruff check components pipelines tests
	$(BIN)/ruff format --check components pipelines tests

bench: install
	$(BIN)/python -m tests.bench

bench-quality: install
	$(BIN)/python -m tests.bench_quality $(BENCH_ARGS)

# Fine-tunes the shipped pretrained model on 200 utterances of voices it never heard and
# scores 60 held-out ones before and after (about 12 min on two CPU cores).
bench-finetune: install
	$(BIN)/python -m tests.bench_finetune $(BENCH_ARGS)

# WER and decoding speed of the shipped CTC model with and without a character n-gram LM
# (alpha tuned on validation only): generates the model's own 1 h corpus first (reuses a
# ready one: BENCH_ARGS="--workdir DIR"), then about a minute per order and beam.
bench-lm: install
	$(BIN)/python -m tests.bench_lm $(BENCH_ARGS)

# Remakes tests/data/pretrained/small_espeak (the model the demo fine-tunes): about 70 min.
pretrained: install
	$(BIN)/python -m tests.pretrained

# Kills download, write-shards (local and gs://) and train at random points, reruns them and
# prints a table: finished, identical outputs, steps recomputed, processes left behind.
chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

corpus: install
	$(BIN)/python -m tests.corpus.generate --out tests/data/peoples_speech --train 300 --dev 60 --test 60 --seed 0

# Image references come from components/images.py (the same ones the pipeline compiles in);
# set ASRFLOW_REGISTRY, or ASRFLOW_DATA_IMAGE / ASRFLOW_TRAIN_IMAGE, to use your registry, and
# compile the pipeline with the same variables set.
images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (none reachable here)"; exit 1; }
	@set -e; read -r data train version source <<< "$$(python3 -c 'from components import images as i; print(i.DATA_IMAGE, i.TRAIN_IMAGE, i.VERSION, i.SOURCE)')"; \
	labels="--build-arg VERSION=$$version --build-arg REVISION=$$(git rev-parse HEAD) --build-arg SOURCE=$$source"; \
	echo "building $$data and $$train"; \
	docker build -f images/data/Dockerfile $$labels -t "$$data" .; \
	docker build -f images/train/Dockerfile $$labels -t "$$train" .; \
	docker push "$$data"; \
	docker push "$$train"

# Both images built here with podman from local stand-in bases (images/local/build.sh says
# how); the train image is the CPU variant of its Dockerfile. Cached: stand-ins are kept,
# podman's layer cache does the rest.
images-local: install
	@missing=""; for p in $(IMAGE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(SUDO) images/local/build.sh all

# Facts about the built images (user, entrypoint, labels, layers, each step's imports).
test-images: images-local
	$(BIN)/pytest -m images tests/images $(PYTEST_ARGS)

# The whole DAG with every task in its image (podman), as `make demo` runs it in the venv.
demo-container: images-local
	$(BIN)/asrflow run --local --runner container --output-dir demo-container-output

# requirements.lock: every package of [data,train] with its hashes, for the images and (as
# constraints) `make install`: run it after changing a pin in pyproject.toml. The CPU torch
# wheel comes from TORCH_FIND_LINKS; its +cpu label is dropped so that the train image's CUDA
# build of torch (installed first from its index) satisfies the pin; the +cpu requirement on
# stdin keeps uv from taking the PyPI (CUDA) build the stripped pin would match. uv, torch:
# pyproject's versions.
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
lock:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(call pip_install,"$$(grep -o '"uv==[0-9.]*"' pyproject.toml | tr -d '"')")
	grep -o '"torch==[0-9.]*"' pyproject.toml | tr -d '"' | sed 's/$$/+cpu/' | \
	$(BIN)/uv pip compile pyproject.toml - --extra data --extra train --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_FIND_LINKS) \
	  --custom-compile-command 'make lock' --quiet -o requirements.lock
	sed -i 's/^torch==\([^ ]*\)+cpu /torch==\1 /' requirements.lock

clean:
	rm -rf $(VENV) demo-output demo-container-output .pytest_cache
