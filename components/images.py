"""The container images the components run in: defined here once, overridable.

Set ``ASRFLOW_DATA_IMAGE`` / ``ASRFLOW_TRAIN_IMAGE`` before compiling to use your own
registry (``make images`` builds and pushes them; ``make images-local`` builds them here with
podman). Standard library only: the pipeline compiler imports this module.
"""

import os

REGISTRY = os.environ.get("ASRFLOW_REGISTRY", "us-docker.pkg.dev/asrflow/asrflow")
VERSION = "0.1.0"
"""The images' tag and their ``org.opencontainers.image.version`` label."""

SOURCE = os.environ.get("ASRFLOW_SOURCE", "https://github.com/asrflow/asrflow")
"""The images' ``org.opencontainers.image.source`` label: where the code they carry lives."""

DATA_IMAGE = os.environ.get("ASRFLOW_DATA_IMAGE", f"{REGISTRY}/data:{VERSION}")
"""CPU tools and this project: download, write-shards, estimate-buckets."""

TRAIN_IMAGE = os.environ.get("ASRFLOW_TRAIN_IMAGE", f"{REGISTRY}/train:{VERSION}")
"""CUDA, NeMo and this project: train, evaluate."""
