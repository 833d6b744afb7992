"""The import rules of ARCHITECTURE.md ("What may import what"): ``components`` never imports
``pipelines``; modules the pipeline compiler imports import only the standard library and kfp at
top level, so that compiling the DAG needs no NeMo, torch or Lhotse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import architecture

REPO = architecture.REPO
ALLOWED_ROOTS = {"kfp", "components", "pipelines", "__future__"}
HEAVY = (
    "torch",
    "nemo",
    "lhotse",
    "lightning",
    "numpy",
    "pyarrow",
    "soundfile",
    "google.cloud.storage",
)  # kfp itself loads the kubernetes client


def compiler_modules() -> list[Path]:
    """pipelines/*.py but the CLI modules and the kubectl plugin, which the compiler never imports."""
    pipeline_modules = [
        p
        for p in sorted((REPO / "pipelines").glob("*.py"))
        if p.name not in {"cli.py", "commands.py", "kubectl_plugin.py"}
    ]
    component_modules = sorted((REPO / "components").glob("*/component.py"))
    shared = [REPO / "components" / "images.py"]
    return pipeline_modules + component_modules + shared


def top_level_imports(path: Path) -> list[str]:
    """Module names imported at module level (not inside functions or classes)."""
    return [found.target for found in architecture.imports(path) if found.top_level]


@pytest.mark.parametrize("path", compiler_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_top_level_imports_are_stdlib_or_kfp(path: Path) -> None:
    bad = [
        name
        for name in top_level_imports(path)
        if name.split(".")[0] not in ALLOWED_ROOTS and name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert not bad, f"{path.relative_to(REPO)} imports {bad} at top level; import them inside functions"


def test_component_modules_exist() -> None:
    names = {p.parent.name for p in compiler_modules() if p.name == "component.py"}
    assert {"download", "shard", "buckets", "train", "evaluate"} <= names


def test_compiling_loads_no_heavy_library() -> None:
    """Importing the pipeline and its components in a fresh interpreter loads none of them."""
    code = (
        "import sys, pipelines.asr_training;"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "", f"compiling imports {result.stdout.strip()}"


def test_components_never_import_pipelines() -> None:
    """Not at top level, not inside a function, not through importlib with a literal name."""
    modules = architecture.project_modules(REPO, ["components"])
    offenders = [
        f"{path.relative_to(REPO)}:{found.line} imports {found.target}"
        for name, path in modules.items()
        for found in architecture.imports(path, name)
        if architecture.in_layers(found.target, ["pipelines"])
    ]
    assert not offenders, "components/ must not import pipelines/ (ARCHITECTURE.md):\n" + "\n".join(offenders)
