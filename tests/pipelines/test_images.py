"""images/: the Dockerfiles lint clean, pin what they install (bases by digest, packages by
hash in requirements.lock), run as non-root, and get the image references from
components/images.py (no Docker engine here: `make images` is run with a stand-in `docker`
command that records what it was asked to do). The built images are tested in tests/images
(make test-images)."""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from components import images

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower()


def pins(*extras: str) -> dict[str, str]:
    """Package → version for every ``name==version`` in pyproject.toml: the core dependencies
    and the given extras (all extras when none is given)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    specs = project["dependencies"] + sum((optional[e] for e in extras or optional), [])
    out = {}
    for spec in specs:
        name, sep, version = spec.partition("==")
        if sep:
            out[canonical(name)] = version
    return out


def lock() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: package → (version, hashes)."""
    text = re.sub(r"\\\n", " ", (REPO / "requirements.lock").read_text())
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement, *options = line.split()
            name, sep, version = requirement.partition("==")
            assert sep, f"requirements.lock: {requirement} is not pinned with =="
            out[canonical(name)] = (
                version,
                [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")],
            )
    return out


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args(path: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions(path) if word == "ARG" and "=" in rest)


def test_both_images_exist() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["data", "train"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_bases_are_pinned_by_digest_and_the_user_is_numeric_non_root(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    declared = args(dockerfile)
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            variable = re.fullmatch(r"\$\{(\w+)\}", image)
            assert variable, (
                f"FROM {image}: the base comes from a build argument (make images-local swaps it)"
            )
            image = declared[variable[1]]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), (
                f"{image} is not pinned by digest"
            )
            name = image.split("@")[0].removeprefix("ghcr.io/")
            assert re.search(rf"skopeo inspect .*docker://\S*{re.escape(name)}", dockerfile.read_text()), (
                f"{dockerfile}: no command that refreshes the digest of {name}"
            )
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot needs a numeric, non-zero USER"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_versions_agree_with_pyproject(dockerfile: Path) -> None:
    declared = args(dockerfile)
    assert declared["TORCH_VERSION"] == pins()["torch"]
    text = dockerfile.read_text()
    assert '"torch==${TORCH_VERSION}"' in text
    assert declared["VERSION"] == images.VERSION and declared["SOURCE"] == images.SOURCE
    uv_tag = re.search(r"/uv:([\d.]+)@", declared["UV_IMAGE"])[1]
    assert uv_tag == pins("dev")["uv"], "the images' uv and the one that makes requirements.lock differ"
    if dockerfile.parent.name == "data":
        assert declared["TORCH_INDEX"].endswith("/whl/cpu")
        assert "--extra data\n" in text and "--extra train" not in text  # no NeMo in the data image
    else:
        assert "--extra data --extra train\n" in text
        # V100 (sm_70) left CUDA 13 builds: the torch build and the base stay on CUDA 12.
        assert re.search(r"/whl/cu12\d$", declared["TORCH_INDEX"])
        assert re.search(r"^nvidia/cuda:12\.", declared["BASE_IMAGE"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_from_the_lock_and_the_labels_come_last(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    runs = [rest for word, rest in steps if word == "RUN" and "uv pip install" in rest]
    assert runs and all("--constraint requirements.lock" in r or "--no-deps /src" in r for r in runs)
    assert "requirements.lock" in next(rest for word, rest in steps if word == "COPY")
    # a new revision must not invalidate the dependency layers: its ARG comes after every RUN
    last_run = max(i for i, (word, _) in enumerate(steps) if word == "RUN")
    revision = next(
        i for i, (word, rest) in enumerate(steps) if word == "ARG" and rest.startswith("REVISION")
    )
    assert revision > last_run
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    for key in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_lock_pins_every_package_with_hashes_and_agrees_with_pyproject() -> None:
    locked = lock()
    assert len(locked) > 100
    unhashed = [name for name, (_, hashes) in locked.items() if not hashes]
    assert not unhashed, f"requirements.lock: no hash for {unhashed}"
    for name, version in pins("data", "train").items():
        assert locked[name][0] == version, (
            f"{name}: pyproject.toml says {version}, the lock {locked[name][0]}"
        )
    assert "+" not in locked["torch"][0]  # the CUDA build of the train image satisfies the pin too
    cuda = [name for name in locked if name.startswith(("nvidia-", "triton", "cuda-toolkit"))]
    assert not cuda, f"the lock holds PyPI's CUDA build of torch, not the CPU one (make lock): {cuda}"
    assert "pytest" not in locked  # the images carry no test tools


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_copy_and_nothing_heavy() -> None:
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "COPY" and "--from" not in rest:
                for source in rest.split()[:-1]:
                    assert not dockerignored(source), f"{dockerfile}: COPY {source} is dockerignored"
    for heavy in (".venv", ".git", "tests/data", "demo-output", "components/__pycache__/x.pyc"):
        assert dockerignored(heavy), heavy
    assert not dockerignored("components/storage.py")


def test_image_references_are_defined_once_and_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        for var in ("ASRFLOW_REGISTRY", "ASRFLOW_DATA_IMAGE", "ASRFLOW_TRAIN_IMAGE"):
            monkeypatch.delenv(var, raising=False)
        default = importlib.reload(images)
        runtime = yaml.safe_load((REPO / "manifests/base/training-runtime.yaml").read_text())
        pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == default.TRAIN_IMAGE
        monkeypatch.setenv("ASRFLOW_REGISTRY", "europe-docker.pkg.dev/p/r")
        monkeypatch.setenv("ASRFLOW_TRAIN_IMAGE", "example.org/train:7")
        changed = importlib.reload(images)
        assert changed.DATA_IMAGE == f"europe-docker.pkg.dev/p/r/data:{changed.VERSION}"
        assert changed.TRAIN_IMAGE == "example.org/train:7"
    finally:
        monkeypatch.undo()
        importlib.reload(images)


def fake_docker(tmp_path: Path, engine: bool) -> Path:
    """A ``docker`` command that logs its arguments; ``docker info`` fails without an engine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = info ]; then exit {0 if engine else 1}; fi\n'
        f'echo "$@" >> {tmp_path / "docker.log"}\n'
    )
    script.chmod(0o755)
    return bin_dir


def make_images(tmp_path: Path, engine: bool, **env: str) -> subprocess.CompletedProcess:
    bin_dir = fake_docker(tmp_path, engine)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASRFLOW_")}
    return subprocess.run(
        ["make", "--no-print-directory", "images"],
        cwd=REPO,
        env={**clean, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )


def test_make_images_builds_and_pushes_the_configured_references(tmp_path: Path) -> None:
    result = make_images(tmp_path, engine=True, ASRFLOW_REGISTRY="registry.example/asr")
    assert result.returncode == 0, result.stderr
    version = images.VERSION
    data, train = f"registry.example/asr/data:{version}", f"registry.example/asr/train:{version}"
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    labels = (
        f"--build-arg VERSION={version} --build-arg REVISION={revision} --build-arg SOURCE={images.SOURCE}"
    )
    assert (tmp_path / "docker.log").read_text().splitlines() == [
        f"build -f images/data/Dockerfile {labels} -t {data} .",
        f"build -f images/train/Dockerfile {labels} -t {train} .",
        f"push {data}",
        f"push {train}",
    ]


def test_make_images_says_when_there_is_no_engine(tmp_path: Path) -> None:
    result = make_images(tmp_path, engine=False)
    assert result.returncode != 0
    assert "needs a running Docker engine" in result.stdout + result.stderr
    assert not (tmp_path / "docker.log").exists()
