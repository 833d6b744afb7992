"""Facts about the images ``make images-local`` built, read from the images themselves:
their config (skopeo), what runs in them (podman run) and what their layers hold (podman
save). Marked ``images``: off in ``make test``, run by ``make test-images``, which builds them."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from components import images
from tests.images.podman import IMAGES, config, env, require_image, run_in

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("components", "pipelines")
# components.train.config serves training too; the TrainJob launcher (a data-image step) reaches
# it through the settings, which call only config_names, so only its imports must work there.
CALLED_ONLY = {"components.train.config": {"config_names"}}
# Files that must never be in a layer: pip's and uv's configuration, the machine's wheel
# directories and indexes, anything under /mnt (where the builds mount the installer's
# settings, read-only and for a RUN only), credentials.
FORBIDDEN = re.compile(
    r"^(etc/pip\.conf|etc/xdg/pip(/.*)?|etc/uv(/.*)?|(root|home/[^/]+)/\.(pip|config/pip|config/uv)(/.*)?"
    r"|opt/wheels(/.*)?|opt/pypi[^/]*(/.*)?|mnt/.+|.*\.netrc|.*/\.docker/config\.json|.*credentials\.json"
    r"|.*/id_(rsa|ed25519|ecdsa))$"
)


@pytest.fixture(scope="module", params=sorted(IMAGES), ids=str)
def image(request) -> str:
    require_image(IMAGES[request.param])
    return IMAGES[request.param]


def test_config_user_entrypoint_and_labels(image: str) -> None:
    cfg = config(image)["config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["asrflow"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == images.VERSION
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])
    assert labels["org.opencontainers.image.source"] == images.SOURCE
    env_vars = dict(item.split("=", 1) for item in cfg["Env"])
    assert env_vars["HOME"] == "/home/asrflow"
    assert not any(key.startswith(("PIP_", "SSL_", "REQUESTS_CA")) for key in env_vars), env_vars


def test_the_entrypoint_is_the_cli(image: str) -> None:
    from tests.images.podman import podman

    result = podman("run", "--rm", "--network", "none", image, "--help")
    assert "download" in result.stdout and "write-shards" in result.stdout, result.stdout


def test_runs_as_uid_1000_and_kfp_executor_is_importable(image: str) -> None:
    result = run_in(image, 'id -u; id -g; python3 -c "import kfp.dsl.executor_main" && echo executor-ok')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "1000", "executor-ok"]


def test_home_and_caches_are_writable(image: str) -> None:
    caches = '"$XDG_CACHE_HOME" "$HF_HOME" "$MPLCONFIGDIR" "$NUMBA_CACHE_DIR"'
    writable = f'for d in {caches}; do mkdir -p "$d" && touch "$d/w"; done'
    result = run_in(image, f'touch "$HOME/w"; {writable}; echo ok')
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # A read-only root with a writable /tmp (how the container runner runs tasks) is enough.
    result = run_in(image, f"{writable}; echo ok", "--read-only", "--tmpfs", "/tmp:rw,mode=1777")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def locked_versions() -> dict[str, str]:
    versions = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", line)
        if match:
            versions[canonical(match[1])] = match[2]
    return versions


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_package_is_locked_at_its_version(image: str) -> None:
    listing = run_in(
        image,
        "python3 -c 'import importlib.metadata as m; "
        'print("\\n".join(d.metadata["Name"] + "==" + d.version for d in m.distributions()))\'',
    )
    assert listing.returncode == 0, listing.stderr
    installed = dict(line.split("==", 1) for line in listing.stdout.split())
    locked = locked_versions()
    unlocked = {
        name: version
        for name, version in installed.items()
        if canonical(name) != "asrflow" and locked.get(canonical(name)) != version.split("+")[0]
    }
    assert not unlocked, f"installed but not at requirements.lock's version: {unlocked}"
    assert installed.get("asrflow") == images.VERSION


def imports_in(tree: ast.AST, functions: set[str] | None = None) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the tree: at module level, and in every function or
    only in the named ones; ``if TYPE_CHECKING:`` blocks left out."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST, wanted: bool) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.FunctionDef) and functions is not None:
            wanted = wanted and node.name in functions
        if wanted and isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif wanted and isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            found.append((node.module or "", [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child, wanted)

    visit(tree, True)
    return found


def own_module(module: str, names: list[str]) -> list[str]:
    """This project's modules an import statement loads (``from components.shard import core``)."""
    if not module.startswith(OWN_PACKAGES):
        return []
    candidates = [f"{module}.{name}" for name in names] + [module]
    return [m for m in candidates if (REPO / (m.replace(".", "/") + ".py")).is_file()]


def import_closure(func) -> list[tuple[str, list[str]]]:
    """Every import a component's body can reach: its own, then those of this project's
    modules it loads (all their functions', or :data:`CALLED_ONLY`'s), transitively."""
    statements = imports_in(ast.parse(inspect.cleandoc("\n" + inspect.getsource(func))))
    seen: set[str] = set()
    queue = [m for module, names in statements for m in own_module(module, names)]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        found = imports_in(tree, CALLED_ONLY.get(module))
        statements += found
        queue += [m for name, names in found for m in own_module(name, names)]
    return sorted({(module, tuple(names)) for module, names in statements})


def components_of(image: str) -> dict[str, object]:
    """name -> the Python function of every KFP component whose image is ``image``."""
    out = {}
    modules = [
        f"components.{path.parent.name}.component" for path in sorted(REPO.glob("components/*/component.py"))
    ]
    for module_name in [*modules, "pipelines.launch_trainjob"]:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            spec = getattr(obj, "component_spec", None)
            if spec is not None and spec.implementation.container.image == image:
                out[name] = obj.python_func
    return out


IMPORT_CHECK = """
import importlib, json, sys
failed = {}
for component, module, names in json.load(sys.stdin):
    try:
        loaded = importlib.import_module(module)
        for name in names:
            if not hasattr(loaded, name):
                importlib.import_module(module + "." + name)
    except Exception as err:
        failed.setdefault(component, []).append(f"{module} {names}: {type(err).__name__}: {err}")
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def import_failures(image: str) -> tuple[dict[str, object], dict[str, list[str]]]:
    """Run every import each of the image's components can reach, inside the image, at once."""
    funcs = components_of(image)
    checks = [
        (name, module, list(names)) for name, func in funcs.items() for module, names in import_closure(func)
    ]
    result = subprocess.run(
        ["podman", "run", "--rm", "-i", "--network", "none", "--read-only", "--tmpfs", "/tmp",
         "--entrypoint", "python3", image, "-c", IMPORT_CHECK],
        env=env(), input=json.dumps(checks), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return funcs, json.loads(result.stdout.strip().splitlines()[-1])


def test_each_component_imports_what_it_needs_in_its_image(import_failures, image: str) -> None:
    funcs, failed = import_failures
    expected = {
        images.DATA_IMAGE: {
            "resolve_revision", "download", "prepare_eval_set", "plan_shard_groups", "write_shard_group",
            "merge_shards", "write_shards", "estimate_buckets", "launch_trainjob", "weigh_source",
            "check_mixture",
        },
        images.TRAIN_IMAGE: {"train", "evaluate", "train_tokenizer", "train_lm"},
    }  # fmt: skip
    assert set(funcs) == expected[image]
    assert not failed, "\n".join(f"{name}: {errors}" for name, errors in failed.items())


def test_the_data_image_has_no_nemo() -> None:
    require_image(images.DATA_IMAGE)
    result = run_in(images.DATA_IMAGE, "python3 -c 'import nemo'")
    assert result.returncode != 0 and "No module named 'nemo'" in result.stderr


def layer_members(image: str):
    """(layer, path, sha256 or None) of every entry in every layer, from ``podman save``."""
    save = subprocess.Popen(
        ["podman", "save", "--format", "docker-archive", image], env=env(), stdout=subprocess.PIPE
    )
    with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
        for member in archive:
            if not (member.isfile() and member.name.endswith(".tar")):  # links: layers listed twice
                continue
            with tarfile.open(fileobj=archive.extractfile(member), mode="r|*") as layer:
                for entry in layer:
                    digest = None
                    if entry.isfile() and entry.name.endswith(("ca-certificates.crt", ".conf", ".toml")):
                        digest = hashlib.sha256(layer.extractfile(entry).read()).hexdigest()
                    yield member.name, entry.name.lstrip("./"), digest
    assert save.wait() == 0


def host_digests() -> dict[str, str]:
    """sha256 of this machine's pip configuration files (none may be in a layer)."""
    paths = ["/etc/pip.conf", "/etc/xdg/pip/pip.conf", str(Path.home() / ".config/pip/pip.conf")]
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest(): p for p in paths if Path(p).is_file()}


def test_no_pip_configuration_or_secret_in_any_layer(image: str) -> None:
    host = host_digests()
    bad = []
    for layer, path, digest in layer_members(image):
        if FORBIDDEN.match(path) or (digest and digest in host):
            bad.append(f"{layer}: {path}" + (f" (= {host[digest]})" if digest in host else ""))
    assert not bad, "\n".join(bad)
    history = json.dumps(config(image)["history"])
    for needle in ("pip.conf", "/opt/wheels", "PIP_", "find-links", "index-url="):
        assert needle not in history, needle
