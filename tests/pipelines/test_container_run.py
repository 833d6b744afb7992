"""The container runner's parts that need no podman: how tasks are run (user, read-only root,
entrypoint, mounts), exit statuses, the errors that say what is missing; and the installer
settings an image build gets from pip's configuration (images/local/installer_config.py).
The runner itself is tested against the built images in tests/images (make test-images)."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines import container_run
from pipelines.cli import main
from pipelines.local_run import PRETRAINED_MODEL, local_arguments, local_sources

REPO = Path(__file__).resolve().parents[2]


def test_tasks_run_as_the_images_user_with_a_read_only_root_and_the_command_as_entrypoint() -> None:
    args = container_run.run_args()
    assert args["user"] == "1000:1000" and args["read_only"] is True
    assert args["entrypoint"] == ["/usr/bin/env"]  # as `command:` replaces ENTRYPOINT on Kubernetes
    assert "/tmp" in args["tmpfs"] and args["network_mode"] == "none"
    from kfp import local

    local.DockerRunner(**args)  # every argument is one kfp.local accepts


def test_mounts_the_data_root_read_write_and_the_sources_read_only(tmp_path: Path) -> None:
    arguments = local_arguments(tmp_path)
    sources = local_sources(arguments)
    corpus = str(REPO / "tests" / "data" / "peoples_speech")
    assert sources == sorted([corpus, str(PRETRAINED_MODEL)])  # the model the demo fine-tunes
    mounts = container_run.task_mounts(arguments["data_root"], sources)
    assert mounts[arguments["data_root"]] == {"bind": arguments["data_root"], "mode": "rw"}
    for source in sources:
        assert mounts[source] == {"bind": source, "mode": "ro"}


def test_remote_sources_are_not_mounted(tmp_path: Path) -> None:
    arguments = {**local_arguments(tmp_path), "train_source": "hf://datasets/MLCommons/peoples_speech"}
    assert "hf://datasets/MLCommons/peoples_speech" not in local_sources(arguments)


def test_directories_go_to_the_task_user(tmp_path: Path) -> None:
    target = tmp_path / "out" / "data"
    container_run.writable_by_task_user(target)
    info = target.stat()
    if os.geteuid() == 0:
        assert info.st_uid == container_run.TASK_UID
    else:
        assert stat.S_IMODE(info.st_mode) == 0o777


def test_what_this_process_wrote_under_the_data_root_goes_to_the_task_user(tmp_path: Path) -> None:
    """The seeded champion record: the evaluate task (the images' uid) replaces it on promotion."""
    record = tmp_path / "data" / "models" / "demo" / "champion.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    container_run.hand_over_to_task_user(tmp_path / "data")
    for path in (tmp_path / "data", record.parent.parent, record.parent, record):
        info = path.stat()
        if os.geteuid() == 0:
            assert info.st_uid == container_run.TASK_UID, path
        else:
            assert stat.S_IMODE(info.st_mode) == (0o777 if path.is_dir() else 0o666), path


class FakeContainer:
    def __init__(self, status: int) -> None:
        self.status, self.removed = status, False

    def logs(self, stream: bool, follow: bool):
        yield b"line one\n"

    def wait(self) -> dict:
        return {"StatusCode": self.status}

    def remove(self, force: bool) -> None:
        self.removed = True


class FakeClient:
    def __init__(self, status: int) -> None:
        self.container = FakeContainer(status)
        self.run_kwargs: dict = {}
        self.containers = self

    def run(self, **kwargs) -> FakeContainer:
        self.run_kwargs = kwargs
        return self.container


@pytest.mark.parametrize("status", [0, 3])
def test_the_exit_status_is_read_before_the_container_is_removed(status: int, capsys) -> None:
    client = FakeClient(status)
    volumes = {"/root/kfp": {"bind": "/root/kfp", "mode": "rw"}}
    extra = {"/data": {"bind": "/data", "mode": "rw"}}
    assert (
        container_run.run_container(client, "img", ["sh"], volumes, extra_volumes=extra, user="1000")
        == status
    )
    assert client.container.removed
    assert "auto_remove" not in client.run_kwargs  # podman 4.3 answers 500, not 404, once it is gone
    assert client.run_kwargs["volumes"] == {**volumes, **extra}
    assert "line one" in capsys.readouterr().out


def test_without_make_images_local_the_run_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONTAINERS_CONF", str(tmp_path / "missing.conf"))
    monkeypatch.setattr(container_run.shutil, "which", lambda name: "/usr/bin/podman")
    result = CliRunner().invoke(
        main, ["run", "--local", "--runner", "container", "--output-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "missing.conf does not exist: run `make images-local` first" in result.output


def installer_config():
    spec = importlib.util.spec_from_file_location(
        "installer_config", REPO / "images/local/installer_config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_pip(tmp_path: Path, listing: str) -> list[str]:
    script = tmp_path / "pip"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}\nEOF\n")
    script.chmod(0o755)
    return [str(script)]


def test_pip_configuration_becomes_a_mounted_uv_config(tmp_path: Path, monkeypatch) -> None:
    config = installer_config()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/bundle.crt")
    pip = fake_pip(
        tmp_path,
        f"global.find-links='{wheels}'\nglobal.extra-index-url='file:///opt/pypi/simple'\n"
        "global.constraint='/etc/xdg/pip/constraints.txt'",
    )
    out = tmp_path / "config"
    volumes = config.write_config(config.pip_settings(pip), out)
    assert volumes == [f"{out}:/mnt:ro", "/etc/ssl/certs/bundle.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
    toml = (out / "uv.toml").read_text()
    assert 'find-links = ["/mnt/find-links-0"]' in toml and "native-tls = true" in toml
    assert "pypi" not in toml  # the extra indexes are left out (the lock was not made from them)
    assert (
        out / "find-links-0" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    ).read_bytes() == b"wheel"


def test_a_missing_find_links_directory_is_named(tmp_path: Path, monkeypatch) -> None:
    config = installer_config()
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    pip = fake_pip(tmp_path, "global.find-links='/nonexistent/wheels'")
    with pytest.raises(SystemExit, match="/nonexistent/wheels"):
        config.write_config(config.pip_settings(pip), tmp_path / "config")


def test_the_build_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "images" / "local" / "build.sh")]).returncode == 0
