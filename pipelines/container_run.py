"""Run kfp.local tasks in their images with podman: ``asrflow run --local --runner container``.

kfp.local's ``DockerRunner`` talks to podman's Docker-compatible API (``podman system
service``, started here for the run). Each task runs its compiled command (``sh -ec … python3
-m kfp.dsl.executor_main``) in its component's image (:mod:`components.images`), as the
image's uid 1000, with a read-only root filesystem, a tmpfs /tmp, no network, and only the
pipeline root, the data root and the run's local sources mounted (at their own paths). Three
things differ from a Docker engine and are handled here:

- the images' ``ENTRYPOINT ["asrflow"]`` would receive the command as arguments; on
  Kubernetes ``command:`` replaces the entrypoint, so here the entrypoint is ``/usr/bin/env``;
- ``DockerRunner`` starts containers with ``auto_remove=True`` and treats a 404 from a gone
  container as success (even for a failed task); podman 4.3 answers 500. Containers are
  kept until their exit status is read, then removed (:func:`run_container`);
- the mounted directories must be writable by uid 1000 (:func:`writable_by_task_user`).

The images come from ``make images-local``; podman's settings from the ``containers.conf``
it writes (``CONTAINERS_CONF``; default /var/tmp/asrflow-images/containers.conf).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TASK_UID = 1000
"""The images' user (USER 1000:1000 in images/*/Dockerfile)."""

DEFAULT_CONTAINERS_CONF = "/var/tmp/asrflow-images/containers.conf"
SERVICE_START_S = 30.0


class ContainerRunError(RuntimeError):
    """The container runner cannot start: podman, its settings or an image is missing."""


def containers_conf() -> str:
    """The containers.conf that ``make images-local`` wrote (runc, cgroupfs, ulimits)."""
    path = os.environ.get("CONTAINERS_CONF", DEFAULT_CONTAINERS_CONF)
    if not Path(path).is_file():
        raise ContainerRunError(f"{path} does not exist: run `make images-local` first (it writes it)")
    return path


@contextlib.contextmanager
def podman_service() -> Iterator[str]:
    """Start ``podman system service`` on a private socket; yields its ``unix://`` URL."""
    if shutil.which("podman") is None:
        raise ContainerRunError("podman is not installed: run `make images-local` (it installs it)")
    env = {**os.environ, "CONTAINERS_CONF": containers_conf()}
    with tempfile.TemporaryDirectory(prefix="asrflow-podman-") as tmp:
        url = f"unix://{tmp}/podman.sock"
        log_path = Path(tmp, "service.log")
        with open(log_path, "wb") as log:
            service = subprocess.Popen(
                ["podman", "system", "service", "--time=0", url], env=env, stdout=log, stderr=log
            )
        try:
            wait_for_socket(url, service, log_path)
            yield url
        finally:
            service.terminate()
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()


def wait_for_socket(url: str, service: subprocess.Popen, log_path: Path) -> None:
    """Wait until the service answers a ping; raise with its log if it exits or never does."""
    import docker

    deadline = time.monotonic() + SERVICE_START_S
    while time.monotonic() < deadline:
        if service.poll() is not None:
            log = log_path.read_text()
            raise ContainerRunError(f"podman system service exited ({service.returncode}): {log}")
        try:
            with contextlib.closing(docker.DockerClient(base_url=url)) as client:
                client.ping()
            return
        except docker.errors.DockerException:
            time.sleep(0.2)
    raise ContainerRunError(f"podman system service did not answer on {url} in {SERVICE_START_S:.0f} s")


def check_images(url: str, images: list[str]) -> None:
    """Fail naming every image that is not in podman's storage (nothing is ever pulled)."""
    import docker

    missing = []
    with contextlib.closing(docker.DockerClient(base_url=url)) as client:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
    if missing:
        raise ContainerRunError(f"not built here: {', '.join(missing)}; run `make images-local`")


def run_container(
    client: Any,
    image: str,
    command: list[str],
    volumes: dict[str, Any],
    extra_volumes: Mapping[str, Any] | None = None,
    **run_args: Any,
) -> int:
    """Run one task's container to the end and return its exit status (for kfp.local).

    Replaces ``kfp.local.docker_task_handler.run_docker_container``: no pulling, no
    auto-removal (the exit status is read before the container is removed), and the run's
    own mounts added to the pipeline root's.
    """
    container = client.containers.run(
        image=image,
        command=command,
        detach=True,
        stdout=True,
        stderr=True,
        volumes={**volumes, **(extra_volumes or {})},
        **run_args,
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def task_mounts(data_root: str, read_only_paths: list[str]) -> dict[str, dict[str, str]]:
    """Docker-style volumes: the data root read-write, local sources read-only, at their paths."""
    mounts = {str(Path(data_root).resolve()): {"bind": str(Path(data_root).resolve()), "mode": "rw"}}
    for path in read_only_paths:
        resolved = str(Path(path).resolve())
        mounts.setdefault(resolved, {"bind": resolved, "mode": "ro"})
    return mounts


def writable_by_task_user(*paths: Path) -> None:
    """Create the directories and give them to the images' uid, so that the tasks can write."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        _give_to_task_user(path)


def hand_over_to_task_user(root: Path) -> None:
    """Give what this process wrote under ``root`` (e.g. the seeded champion record) to the
    images' uid: the tasks replace such files, and a task writes as that uid only."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink() and path.stat().st_uid != TASK_UID:
            _give_to_task_user(path)


def _give_to_task_user(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, TASK_UID, TASK_UID)
    else:
        path.chmod(0o777 if path.is_dir() else 0o666)


def run_args() -> dict[str, Any]:
    """``containers.run`` arguments for every task: the cluster's user and a read-only root."""
    return {
        "entrypoint": ["/usr/bin/env"],  # command: replaces the entrypoint, as on Kubernetes
        "user": f"{TASK_UID}:{TASK_UID}",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,mode=1777"},
        "network_mode": "none",
        "shm_size": "1g",  # dataloader workers share tensors through /dev/shm
    }


@contextlib.contextmanager
def container_runner(data_root: str, read_only_paths: list[str], images: list[str]) -> Iterator[Any]:
    """A kfp.local ``DockerRunner`` on podman for the length of the block.

    Args:
        data_root: the run's data root (a local directory), mounted read-write.
        read_only_paths: local sources the tasks read, mounted read-only.
        images: the images the tasks use; all must be built (``make images-local``).

    Raises:
        ContainerRunError: podman, its containers.conf or an image is missing.
    """
    from kfp import local
    from kfp.local import docker_task_handler

    with podman_service() as url:
        check_images(url, images)
        extra = task_mounts(data_root, read_only_paths)
        original = docker_task_handler.run_docker_container
        previous_host = os.environ.get("DOCKER_HOST")

        def run(client: Any, image: str, command: list[str], volumes: dict[str, Any], **kwargs: Any) -> int:
            return run_container(client, image, command, volumes, extra_volumes=extra, **kwargs)

        docker_task_handler.run_docker_container = run
        os.environ["DOCKER_HOST"] = url  # DockerTaskHandler uses docker.from_env()
        try:
            yield local.DockerRunner(**run_args())
        finally:
            docker_task_handler.run_docker_container = original
            if previous_host is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous_host
