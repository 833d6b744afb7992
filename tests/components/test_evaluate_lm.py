"""``asrflow evaluate --lm``: beam search with and without an n-gram LM, the LM weight tuned on
the validation set, key phrases boosted, an LM of another tokenizer refused.

The model is an untrained tiny sub-word CTC model (its transcripts are noise, but
deterministic noise that an LM and boosted phrases visibly change); the LM comes from
``components.lm.core.train_lm`` on the bundled validation text, cut with the model's tokenizer.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.evaluate import core
from components.evaluate.decoding import DEFAULT_BOOST_ALPHA, ModelInfo
from components.evaluate.errors import EvaluateError
from components.evaluate.lm import DEFAULT_LM_ALPHA, parse_alpha_grid, read_boost_phrases

SET_SIZE = 6  # utterances per set: beam search on CPU is slow enough


@pytest.fixture(scope="module")
def ctc_model(bpe_nemo_model: Callable[[str], Path]) -> Path:
    return bpe_nemo_model("ctc")


@pytest.fixture(scope="module")
def lm_dir(
    bundled_eval_manifest: Path, bpe_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 3-gram over the bundled validation text with the models' tokenizer (train-lm's output)."""
    from components.lm.core import train_lm

    out = tmp_path_factory.mktemp("lm") / "lm"
    train_lm([str(bundled_eval_manifest)], str(bpe_tokenizer), str(out), order=3)
    return out


@pytest.fixture(scope="module")
def sets(bundled_eval_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small sets cut from the bundled validation split: ``dev`` and ``test``, absolute audio paths."""
    root = tmp_path_factory.mktemp("lm-sets")
    entries = [json.loads(line) for line in bundled_eval_manifest.read_text().splitlines()]
    for entry in entries:
        entry["audio_filepath"] = str(bundled_eval_manifest.parent / entry["audio_filepath"])
    made = {}
    for index, name in enumerate(("dev", "test")):
        part = entries[index * SET_SIZE : (index + 1) * SET_SIZE]
        made[name] = root / f"{name}.json"
        made[name].write_text("".join(json.dumps(entry) + "\n" for entry in part))
    return made


def run(model: Path, sets: dict[str, Path], out: Path, **options: Any) -> dict[str, Any]:
    specs = [f"{name}={path}" for name, path in sets.items()]
    return core.evaluate(
        str(model),
        specs,
        str(out),
        device="cpu",
        batch_size=4,
        echo=False,
        decoding=core.DecodingOptions(**options),
    )


def predictions(card: dict[str, Any], set_name: str, decoding: str) -> list[str]:
    uri = card["sets"][set_name]["decodings"][decoding]["hypotheses"]
    return [json.loads(line)["pred_text"] for line in Path(uri).read_text().splitlines()]


def test_scored_with_and_without_the_lm_and_alpha_zero_is_beam_without_lm(
    ctc_model: Path, lm_dir: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    card = run(ctc_model, sets, tmp_path / "alpha0", lm=str(lm_dir), lm_alpha=0.0, beam_size=4)
    assert list(card["decodings"]) == ["ctc_greedy", "ctc_beam", "ctc_beam_lm"]
    assert card["decodings"]["ctc_beam_lm"] == {
        "head": "ctc",
        "strategy": "beam_batch",
        "beam_size": 4,
        "lm": str(lm_dir / "lm.nemo"),
        "lm_md5": card["lm"]["md5"],
        "lm_alpha": 0.0,
    }
    assert card["lm"]["vocab_size"] == 64 and card["lm"]["tokenizer"].endswith("tokenizer.model")
    for name in sets:
        decodings = card["sets"][name]["decodings"]
        assert set(decodings) == {"ctc_greedy", "ctc_beam", "ctc_beam_lm"}
        assert card["sets"][name]["wer"] == decodings["ctc_greedy"]["wer"]  # the served figure: no LM
        # the LM is loaded and fused, with weight 0: the beam search's own hypotheses
        assert predictions(card, name, "ctc_beam_lm") == predictions(card, name, "ctc_beam")
        assert any(predictions(card, name, "ctc_beam"))

    weighted = run(ctc_model, sets, tmp_path / "alpha1", lm=str(lm_dir), lm_alpha=1.0, beam_size=4)
    for name in sets:
        assert predictions(weighted, name, "ctc_beam") == predictions(card, name, "ctc_beam")
        assert predictions(weighted, name, "ctc_beam_lm") != predictions(weighted, name, "ctc_beam")
        assert weighted["sets"][name]["decodings"]["ctc_beam_lm"]["wer"] < weighted["sets"][name]["wer"]
    report = (tmp_path / "alpha1" / "report.md").read_text()
    assert "## Language model" in report and "beam_batch, beam 4, LM α=1" in report
    assert f"`{lm_dir / 'lm.nemo'}`, built for the tokenizer" in report


def test_lm_weight_is_tuned_on_the_validation_set_only(
    ctc_model: Path, lm_dir: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    ordered = {"test": sets["test"], "dev": sets["dev"]}  # the validation set need not come first
    grid = (0.0, 0.5, 2.0)
    card = run(
        ctc_model, ordered, out, lm=str(lm_dir), tune_lm_alpha=True, lm_alpha_grid=grid, validation_set="dev"
    )
    tuning = card["lm"]["tuning"]["ctc_beam_lm"]
    assert tuning["set"] == "dev" and [item["alpha"] for item in tuning["grid"]] == list(grid)
    best = min(tuning["grid"], key=lambda item: (item["wer"], item["cer"], item["alpha"]))
    assert tuning["alpha"] == best["alpha"] == card["decodings"]["ctc_beam_lm"]["lm_alpha"]
    assert card["lm"]["alpha"] == {"ctc_beam_lm": best["alpha"]}
    assert card["sets"]["dev"]["decodings"]["ctc_beam_lm"]["wer"] == best["wer"]
    assert sorted(p.name for p in (out / "dev" / "ctc_beam_lm_tuning").iterdir()) == [
        f"alpha-{alpha:g}" for alpha in grid
    ]
    assert not list(out.glob("test/*_tuning"))  # the other set is never decoded to choose

    # the other set is decoded once, with the chosen weight: as a run with that weight gives
    fixed = run(ctc_model, {"test": sets["test"]}, tmp_path / "fixed", lm=str(lm_dir), lm_alpha=best["alpha"])
    assert predictions(card, "test", "ctc_beam_lm") == predictions(fixed, "test", "ctc_beam_lm")
    report = (out / "report.md").read_text()
    assert "ctc_beam_lm: LM weight tuned on `dev` only" in report
    assert f"{best['alpha']:g} (chosen)" in report


def test_boosted_key_phrases(ctc_model: Path, sets: dict[str, Path], tmp_path: Path) -> None:
    boost = tmp_path / "phrases.txt"
    boost.write_text("Hello, World!\n\nhello world\nsarah\n")
    one_set = {"dev": sets["dev"]}
    card = run(ctc_model, one_set, tmp_path / "boosted", boost=str(boost), boost_alpha=2.0)
    assert list(card["decodings"]) == ["ctc_greedy", "ctc_beam"]  # key phrases need a beam search
    assert card["boost"] == {"file": str(boost), "phrases": ["hello world", "sarah"], "alpha": 2.0}
    assert card["decodings"]["ctc_beam"]["boost_phrases"] == 2
    plain = run(ctc_model, one_set, tmp_path / "plain", beam_size=4)
    said = " ".join(predictions(card, "dev", "ctc_beam"))
    said_plain = " ".join(predictions(plain, "dev", "ctc_beam"))
    assert said.count("hello world") > said_plain.count("hello world")


def test_bad_boost_files_are_named(tmp_path: Path) -> None:
    bpe = ModelInfo("m", ("ctc",), "ctc", ("<unk>", "▁a"), None)
    with pytest.raises(EvaluateError, match=f"--boost {tmp_path / 'none.txt'}: no such file"):
        read_boost_phrases(str(tmp_path / "none.txt"), bpe)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(EvaluateError, match="no key phrase in it"):
        read_boost_phrases(str(empty), bpe)
    bad = tmp_path / "bad.txt"
    bad.write_text("good phrase\n!!!\n")
    with pytest.raises(EvaluateError, match=f"{bad}:2: '!!!' has no letters or digits"):
        read_boost_phrases(str(bad), bpe)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(EvaluateError, match="not UTF-8 text"):
        read_boost_phrases(str(binary), bpe)
    characters = ModelInfo("m", ("ctc",), "ctc", None, ("a", "b"))
    with pytest.raises(EvaluateError, match="needs a sub-word"):
        read_boost_phrases(str(bad), characters)


def other_lm(bundled_eval_manifest: Path, root: Path, vocab_size: int, model_type: str) -> Path:
    from components.lm.core import train_lm
    from components.train.tokenizer import train_tokenizer

    tokenizer = root / f"tokenizer-{model_type}-{vocab_size}"
    train_tokenizer(str(bundled_eval_manifest), str(tokenizer), vocab_size, model_type=model_type)
    train_lm(
        [str(bundled_eval_manifest)], str(tokenizer), str(root / f"lm-{model_type}-{vocab_size}"), order=2
    )
    return root / f"lm-{model_type}-{vocab_size}"


def test_an_lm_of_another_tokenizer_is_refused(
    ctc_model: Path,
    tiny_nemo_model: Path,
    lm_dir: Path,
    bundled_eval_manifest: Path,
    sets: dict[str, Path],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    smaller = other_lm(bundled_eval_manifest, tmp_path, 48, "bpe")
    with pytest.raises(
        EvaluateError, match=r"was built for the tokenizer .*\(48 tokens\), but .* has a tokenizer of 64"
    ):
        run(ctc_model, sets, out, lm=str(smaller))
    same_size = other_lm(bundled_eval_manifest, tmp_path, 64, "unigram")
    with pytest.raises(EvaluateError, match="has another tokenizer of the same size") as err:
        run(ctc_model, sets, out, lm=str(same_size / "lm.arpa"))
    assert str(same_size / "lm.arpa") in str(err.value)
    with pytest.raises(EvaluateError, match=f"{tiny_nemo_model} is a character model"):
        run(tiny_nemo_model, sets, out, lm=str(lm_dir))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(lm_dir / "lm.nemo", bare / "lm.nemo")
    with pytest.raises(EvaluateError, match="no card.json beside lm.nemo"):
        run(ctc_model, sets, out, lm=str(bare / "lm.nemo"))
    with pytest.raises(EvaluateError, match="no such LM"):
        run(ctc_model, sets, out, lm=str(tmp_path / "nowhere"))
    with pytest.raises(EvaluateError, match="--tune-lm-alpha needs an LM"):
        run(ctc_model, sets, out, tune_lm_alpha=True)
    with pytest.raises(EvaluateError, match="--validation-set 'val' is not one of the sets: dev, test"):
        run(ctc_model, sets, out, lm=str(lm_dir), tune_lm_alpha=True, validation_set="val")
    assert not (out / "card.json").exists()


def _asrflow(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("asrflow")), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )


def test_cli_lm_options(ctc_model: Path, lm_dir: Path, sets: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", str(ctc_model), f"dev={sets['dev']}", "--out", str(tmp_path / "out")]
    result = _asrflow(*args, "--lm", str(lm_dir), "--lm-alpha", "0.3", "--beam", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["decodings"]["ctc_beam_lm"]["lm_alpha"] == 0.3
    assert card["decodings"]["ctc_beam_lm"]["beam_size"] == card["lm"]["beam_size"] == 2
    assert "evaluate model set 1/1 dev ctc_beam_lm: utterances" in result.stderr
    bad = _asrflow(*args, "--lm", str(lm_dir), "--tune-lm-alpha", "--lm-alpha-grid", "0.1,x")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "Error: --lm-alpha-grid '0.1,x': give comma-separated numbers" in bad.stderr


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_component_tunes_on_the_validation_set_and_logs_every_decoding(
    ctc_model: Path, lm_dir: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    from kfp import local

    from components.evaluate.component import evaluate

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = evaluate(
        model_uri=str(ctc_model),
        eval_sets=[{"name": "test", "manifest": str(sets["test"])}],
        data_root=str(tmp_path / "root"),
        run_id="run-1",
        validation_set=f"dev={sets['dev']}",
        lm_dir=str(lm_dir),
        tune_lm_alpha=True,
        lm_alpha_grid="0,0.5",
        beam_size=2,
    )
    card = json.loads(Path(task.outputs["card"].path).read_text())
    metrics = task.outputs["metrics"].metadata
    assert card["lm"]["tuning"]["ctc_beam_lm"]["set"] == "dev"
    for name in ("dev", "test"):
        for key in ("ctc_greedy", "ctc_beam", "ctc_beam_lm"):
            assert metrics[f"{name}_{key}_wer"] == card["sets"][name]["decodings"][key]["wer"]
    assert metrics["mean_ctc_beam_lm_wer"] == card["mean_wer_by_decoding"]["ctc_beam_lm"]
    assert "## Language model" in Path(task.outputs["report"].path).read_text()


def test_component_lm_parameters_default_to_no_lm() -> None:
    from components.evaluate.component import evaluate

    parameters = inspect.signature(evaluate.python_func).parameters
    assert parameters["lm_dir"].default == "" and parameters["boost_file"].default == ""
    assert parameters["lm_alpha"].default == DEFAULT_LM_ALPHA
    assert parameters["boost_alpha"].default == DEFAULT_BOOST_ALPHA
    assert parameters["beam_size"].default == 0 and parameters["tune_lm_alpha"].default is False
    doc = evaluate.python_func.__doc__ or ""
    for name in (
        "lm_dir",
        "lm_alpha",
        "beam_size",
        "tune_lm_alpha",
        "lm_alpha_grid",
        "boost_file",
        "boost_alpha",
    ):
        assert f"        {name}: " in doc, name


def test_alpha_grid() -> None:
    assert parse_alpha_grid("0.5, 0.1,0.5") == (0.1, 0.5)
    with pytest.raises(EvaluateError, match="comma-separated numbers"):
        parse_alpha_grid("a,b")
    with pytest.raises(EvaluateError, match="each at least 0"):
        parse_alpha_grid("-1")


# --- a character model: an LM of its labels --------------------------------------------------


@pytest.fixture(scope="module")
def char_model() -> Path:
    """The shipped pretrained character Conformer-CTC (tests/data/pretrained/small_espeak)."""
    from pipelines.local_run import PRETRAINED_MODEL

    return PRETRAINED_MODEL


@pytest.fixture(scope="module")
def char_lm_dir(
    bundled_eval_manifest: Path, char_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 6-gram of the model's labels over the bundled validation text (train-lm --labels-from)."""
    from components.lm.core import train_lm

    out = tmp_path_factory.mktemp("char-lm") / "lm"
    train_lm([str(bundled_eval_manifest)], "", str(out), order=6, labels_from=str(char_model))
    return out


def test_a_character_model_decodes_with_an_lm_of_its_labels(
    char_model: Path, char_lm_dir: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    card = run(
        char_model,
        {"dev": sets["dev"]},
        out,
        lm=str(char_lm_dir),
        tune_lm_alpha=True,
        lm_alpha_grid=(0.0, 1.0),
        validation_set="dev",
        beam_size=4,
    )
    assert list(card["decodings"]) == ["ctc_greedy", "ctc_beam", "ctc_beam_lm"]
    assert card["lm"]["labels_from"] == str(char_model) and card["lm"]["vocab_size"] == 38

    def tuned(alpha: str) -> list[str]:
        hypotheses = out / "dev" / "ctc_beam_lm_tuning" / f"alpha-{alpha}" / "hypotheses.jsonl"
        return [json.loads(line)["pred_text"] for line in hypotheses.read_text().splitlines()]

    # the LM loaded and fused with weight 0: the beam search's own hypotheses
    assert tuned("0") == predictions(card, "dev", "ctc_beam")
    # the LM knows these very sentences: it helps only if NeMo reads its ids as the labels
    wer = {item["alpha"]: item["wer"] for item in card["lm"]["tuning"]["ctc_beam_lm"]["grid"]}
    assert wer[1.0] < wer[0.0] == card["sets"]["dev"]["decodings"]["ctc_beam"]["wer"]
    assert card["lm"]["alpha"] == {"ctc_beam_lm": 1.0} and tuned("1") == predictions(
        card, "dev", "ctc_beam_lm"
    )
    report = (out / "report.md").read_text()
    assert f"`{char_lm_dir / 'lm.nemo'}`, built for the 38 labels of `{char_model}`, beam 4." in report


def test_an_lm_of_other_units_is_refused_for_a_character_model(
    char_model: Path,
    char_lm_dir: Path,
    ctc_model: Path,
    bundled_eval_manifest: Path,
    sets: dict[str, Path],
    tmp_path: Path,
) -> None:
    from components.lm.core import train_lm
    from components.train.config import load_config

    def labels_lm(name: str, labels: list[str]) -> Path:
        config = tmp_path / f"{name}.yaml"
        config.write_text(json.dumps({"model": {"labels": labels}}))
        train_lm([str(bundled_eval_manifest)], "", str(tmp_path / name), order=2, labels_from=str(config))
        return tmp_path / name

    labels = list(load_config("small").model.labels)
    out = tmp_path / "out"
    swapped = labels_lm("swapped", [labels[0], labels[2], labels[1], *labels[3:]])
    with pytest.raises(
        EvaluateError, match=r"has other labels, as many \(token 1 is 'b' in the LM's, 'a' in"
    ):
        run(char_model, sets, out, lm=str(swapped))
    fewer = labels_lm("fewer", labels[:28])  # no digits
    with pytest.raises(
        EvaluateError, match=rf"built for the 28 labels of .*, but {char_model} has 38 labels"
    ):
        run(char_model, sets, out, lm=str(fewer))
    with pytest.raises(EvaluateError, match=f"but {ctc_model} is a sub-word model"):
        run(ctc_model, sets, out, lm=str(char_lm_dir))
    assert not (out / "card.json").exists()
