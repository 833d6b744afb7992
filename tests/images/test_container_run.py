"""The whole DAG with every task in its image (``asrflow run --local --runner container``)
against the same DAG in this environment: the same data, the same model figures, the same
WER table. Marked ``images`` (make test-images builds the images first)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from components import images
from pipelines.local_run import run_local, wer_table
from tests.images.podman import require_image

pytestmark = pytest.mark.images

OVERRIDES = {"max_steps": 6, "checkpoint_every": 3, "num_buckets": 3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    for image in (images.DATA_IMAGE, images.TRAIN_IMAGE):
        require_image(image)
    out = tmp_path_factory.mktemp("runs")
    return {
        runner: run_local(out / runner, OVERRIDES, runner=runner) for runner in ("container", "subprocess")
    }


def digests(data_root: Path, pattern: str) -> dict[str, str]:
    """relative path -> sha256 of each file, with the run's own data root in it made neutral."""
    root = str(data_root).encode()
    return {
        str(path.relative_to(data_root)): hashlib.sha256(
            path.read_bytes().replace(root, b"DATA_ROOT")
        ).hexdigest()
        for path in sorted(data_root.glob(pattern))
        if path.is_file()
    }


def test_the_same_wer_table(runs: dict[str, dict]) -> None:
    container, subprocess = runs["container"], runs["subprocess"]
    assert wer_table(container["eval"]) == wer_table(subprocess["eval"])
    for name, figures in subprocess["eval"]["sets"].items():
        assert container["eval"]["sets"][name]["wer"] == figures["wer"]
        assert container["eval"]["sets"][name]["cer"] == figures["cer"]
    assert container["num_tasks"] == subprocess["num_tasks"]


def test_the_same_data_byte_for_byte(runs: dict[str, dict]) -> None:
    roots = {runner: Path(summary["data_root"]) for runner, summary in runs.items()}
    for pattern in ("datasets/*/*/*/*/raw/**/*", "datasets/*/*/*/*/tarred/*/*.tar", "datasets/**/*.json"):
        container, subprocess = digests(roots["container"], pattern), digests(roots["subprocess"], pattern)
        assert container, pattern
        changed = {
            path
            for path in container.keys() | subprocess.keys()
            if container.get(path) != subprocess.get(path)
        }
        assert not changed, f"{pattern}: differ between the runs: {sorted(changed)[:10]}"


def test_the_same_trained_model_figures(runs: dict[str, dict]) -> None:
    cards = {
        runner: json.loads(next(Path(summary["data_root"]).glob("runs/*/card.json")).read_text())
        for runner, summary in runs.items()
    }
    for key in ("steps", "precision", "final_train_loss", "val_wer"):
        assert cards["container"][key] == cards["subprocess"][key], key


def test_the_same_transcripts(runs: dict[str, dict]) -> None:
    texts = {}
    for runner, summary in runs.items():
        root = Path(summary["data_root"])
        texts[runner] = {
            path.parent.name: path.read_text().replace(str(root), "DATA_ROOT")
            for path in root.glob("runs/*/eval/*/hypotheses.jsonl")
        }
    assert set(texts["container"]) == {"dev", "test"}
    assert texts["container"] == texts["subprocess"]


def test_tasks_wrote_as_uid_1000(runs: dict[str, dict]) -> None:
    data_root = Path(runs["container"]["data_root"])
    owners = {path.stat().st_uid for path in data_root.rglob("*")}
    assert owners == {1000}, owners
