"""ARCHITECTURE.md's import graph is the one the code has (``make architecture`` redraws it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import architecture

ARCHITECTURE = architecture.REPO / "ARCHITECTURE.md"


def test_the_committed_import_graph_is_the_codes() -> None:
    document = ARCHITECTURE.read_text()
    assert architecture.with_graph(document, architecture.mermaid()) == document, (
        "ARCHITECTURE.md's import graph is out of date: run `make architecture` and commit"
    )


def test_imports_are_read_at_any_depth_relative_literal_and_typing_only(tmp_path: Path) -> None:
    package = tmp_path / "components" / "step"
    package.mkdir(parents=True)
    (tmp_path / "components" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(
        "import os\n"
        "from . import cli\n"
        "from ..storage import join\n"
        "def run():\n"
        "    from pipelines import placement\n"
        "    import importlib\n"
        "    importlib.import_module('pipelines.remote')\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
    )
    found = architecture.imports(
        package / "core.py", "components.step.core", known={"components.step.cli", "components.storage"}
    )
    assert [(i.target, i.line, i.top_level) for i in found] == [
        ("os", 1, True),
        ("components.step.cli", 2, True),
        ("components.storage", 3, True),
        ("pipelines", 5, False),
        ("importlib", 6, False),
        ("pipelines.remote", 7, False),
        ("torch", 9, False),
    ]


def test_the_graph_is_written_between_the_markers_only() -> None:
    document = f"intro\n{architecture.BEGIN}\nold\n{architecture.END}\noutro\n"
    assert architecture.with_graph(document, "new") == (
        f"intro\n{architecture.BEGIN}\nnew\n{architecture.END}\noutro\n"
    )
    with pytest.raises(ValueError, match="markers"):
        architecture.with_graph("no markers", "new")
