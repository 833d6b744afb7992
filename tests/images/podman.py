"""podman for the image tests: the settings ``make images-local`` wrote, the built images."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from components import images
from pipelines.container_run import ContainerRunError, containers_conf

IMAGES = {"data": images.DATA_IMAGE, "train": images.TRAIN_IMAGE}


def env() -> dict[str, str]:
    try:
        return {**os.environ, "CONTAINERS_CONF": containers_conf()}
    except ContainerRunError as err:
        pytest.fail(str(err))


def podman(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run podman with this machine's containers.conf; fail the test with its output."""
    result = subprocess.run(["podman", *args], env=env(), capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def require_image(image: str) -> None:
    if podman("image", "exists", image, check=False).returncode != 0:
        pytest.fail(f"{image} is not built here: run `make images-local` (make test-images does)")


def run_in(image: str, script: str, *options: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``sh -ec SCRIPT`` in the image as its own user, no network (the entrypoint replaced)."""
    return podman(
        "run", "--rm", "-i", "--network", "none", *options, "--entrypoint", "/usr/bin/env",
        image, "sh", "-ec", script, stdin=stdin, check=False,
    )  # fmt: skip


def config(image: str) -> dict[str, Any]:
    """The image's OCI config, as a registry would serve it (skopeo)."""
    result = subprocess.run(
        ["skopeo", "inspect", "--config", f"containers-storage:{image}"],
        env=env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"skopeo inspect --config containers-storage:{image}: {result.stderr}")
    return json.loads(result.stdout)
