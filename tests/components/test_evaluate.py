"""``asrflow evaluate``: transcription with tiny NeMo models, WER/CER, report, champion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import pytest
import soundfile

from components import layout, storage
from components.evaluate import core
from components.evaluate.champion import DEFAULT_MAX_WER, decide_promotion
from components.evaluate.errors import EvaluateError
from components.evaluate.sets import default_set_name, eval_set_specs, split_set_spec
from components.manifest import ManifestError, normalize_text

SENTENCES = (
    "A cat sat on the mat.",
    "It's a fine day, isn't it?",
    "Seven boats came in at dawn",
    "Read a book.",
)


def synthesize(text: str, path: Path) -> float:
    """Speak ``text`` with espeak-ng into a 16 kHz mono WAV; returns its duration in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    speech = subprocess.run(
        ["espeak-ng", "-v", "en", "-s", "170", "--stdout", text], check=True, capture_output=True
    )
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(path)],
        input=speech.stdout,
        check=True,
        capture_output=True,
    )
    return round(soundfile.info(str(path)).duration, 3)


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


@pytest.fixture(scope="session")
def speech_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small eval set: espeak-ng audio under ``audio/`` and a manifest with relative paths."""
    root = tmp_path_factory.mktemp("speech") / "speech-set"
    entries = []
    for index, text in enumerate(SENTENCES):
        relative = f"audio/u{index}.wav"
        entries.append(
            {"audio_filepath": relative, "duration": synthesize(text, root / relative), "text": text}
        )
    return write_manifest(root / "manifest.json", entries)


@pytest.fixture
def letter_set(speech_set: Path, tmp_path: Path) -> Path:
    """The same audio with every reference "a": a model that always says "a" scores 0% WER."""
    entries = [
        {**entry, "audio_filepath": str(speech_set.parent / entry["audio_filepath"]), "text": "a"}
        for entry in map(json.loads, speech_set.read_text().splitlines())
    ]
    return write_manifest(tmp_path / "letter.json", entries)


def read_rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_evaluate(model: Path, sets: list[str], out: Path, **kwargs: Any) -> dict[str, Any]:
    return core.evaluate(str(model), sets, str(out), device="cpu", batch_size=2, echo=False, **kwargs)


# --- scoring -------------------------------------------------------------------------------


def check_against_jiwer(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Recompute a set's figures with jiwer from its hypotheses.jsonl alone; return the rows."""
    rows = read_rows(figures["hypotheses"])
    assert len(rows) == figures["num_utterances"]
    refs = [normalize_text(row["text"]) for row in rows]
    hyps = [normalize_text(row["pred_text"]) for row in rows]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    assert figures["wer"] == pytest.approx(words.wer)
    assert figures["cer"] == pytest.approx(chars.cer)
    counts = (figures["substitutions"], figures["insertions"], figures["deletions"], figures["hits"])
    assert counts == (words.substitutions, words.insertions, words.deletions, words.hits)
    for row, ref, hyp in zip(rows, refs, hyps, strict=True):
        assert row["wer"] == pytest.approx(jiwer.wer(ref, hyp))
        assert row["cer"] == pytest.approx(jiwer.cer(ref, hyp))
    return rows


def test_wer_and_cer_equal_jiwer_on_own_hypotheses(
    tiny_nemo_model: Path,
    constant_nemo_model: Callable[[str | None], Path],
    bundled_eval_manifest: Path,
    speech_set: Path,
    tmp_path: Path,
) -> None:
    sets = [f"bundled={bundled_eval_manifest}", f"speech={speech_set}"]
    expected_text = [json.loads(line)["text"] for line in bundled_eval_manifest.read_text().splitlines()]
    for label, model in (("tiny", tiny_nemo_model), ("says-a", constant_nemo_model("a"))):
        card = run_evaluate(model, sets, tmp_path / label)
        for name in ("bundled", "speech"):
            rows = check_against_jiwer(card["sets"][name])
            assert any(row["pred_text"] for row in rows), f"{label}: a model that says nothing tests little"
        rows = read_rows(card["sets"]["bundled"]["hypotheses"])
        assert [row["text"] for row in rows] == expected_text  # manifest order, whatever the batching
        assert card["mean_wer"] == pytest.approx(
            (card["sets"]["bundled"]["wer"] + card["sets"]["speech"]["wer"]) / 2
        )

    # "a" is a word in three of the four sentences: hits and errors mixed, exactly known
    says_a = card["sets"]["speech"]
    assert {row["pred_text"] for row in read_rows(says_a["hypotheses"])} == {"a"}
    assert (says_a["hits"], says_a["substitutions"], says_a["insertions"]) == (3, 1, 0)
    assert says_a["wer"] == pytest.approx(1 - 3 / sum(len(normalize_text(t).split()) for t in SENTENCES))


def test_card_fields_and_report(tiny_nemo_model: Path, speech_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    card = run_evaluate(tiny_nemo_model, [str(speech_set), f"again={speech_set}"], out, worst=2)
    assert card["step"] == "evaluate"
    assert card["model"] == str(tiny_nemo_model)
    assert card["model_md5"] == storage.file_md5(tiny_nemo_model)
    assert list(card["sets"]) == ["speech-set", "again"]  # from the manifest's directory, or NAME=
    expected_hours = sum(json.loads(line)["duration"] for line in speech_set.read_text().splitlines()) / 3600
    for figures in card["sets"].values():
        for field in (
            "wer",
            "cer",
            "substitutions",
            "insertions",
            "deletions",
            "hits",
            "num_utterances",
            "hours",
        ):
            assert field in figures
        assert figures["num_utterances"] == len(SENTENCES)
        assert figures["hours"] == pytest.approx(expected_hours, abs=1e-6)
        assert figures["hits"] + figures["substitutions"] + figures["deletions"] == sum(
            len(normalize_text(text).split()) for text in SENTENCES
        )
    assert card["champion"] is None
    assert json.loads((out / "card.json").read_text()) == card
    assert storage.is_complete(str(out))

    report = (out / "report.md").read_text()
    for name in ("speech-set", "again"):  # a row of the sets table: name, then 4 utterances
        assert re.search(rf"^\| {name} +\| +4 \|", report, re.M), report
    rows = read_rows(card["sets"]["speech-set"]["hypotheses"])
    worst = sorted(rows, key=lambda row: -row["wer"])[:2]
    section = report.split("## Worst utterances: speech-set")[1].split("##")[0]
    table_rows = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    assert len(table_rows) == 2
    for row in worst:
        assert normalize_text(row["text"]) in section
    assert f"{100 * worst[0]['wer']:.2f}%" in table_rows[0]


def test_relative_audio_paths_resolve_against_the_manifest(
    constant_nemo_model: Callable[[str | None], Path],
    bundled_eval_manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    entries = [json.loads(line) for line in bundled_eval_manifest.read_text().splitlines()]
    assert not Path(entries[0]["audio_filepath"]).is_absolute()
    card = run_evaluate(constant_nemo_model("a"), [str(bundled_eval_manifest)], tmp_path / "out")
    rows = read_rows(card["sets"]["validation"]["hypotheses"])
    assert [row["audio_filepath"] for row in rows] == [
        str(bundled_eval_manifest.parent / entry["audio_filepath"]) for entry in entries
    ]


def test_parquet_dataset_is_exported_and_scored_like_its_manifest(
    tiny_nemo_model: Path, bundled_corpus: Path, bundled_eval_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    card = run_evaluate(
        tiny_nemo_model,
        [f"parquet={bundled_corpus / 'validation'}", f"manifest={bundled_eval_manifest}"],
        out,
    )
    parquet, manifest = card["sets"]["parquet"], card["sets"]["manifest"]
    assert parquet["manifest"] == str(out / "parquet" / "input" / "manifest.json")
    assert parquet["source"] == str(bundled_corpus / "validation")
    assert parquet["fingerprint"] == manifest["fingerprint"]
    for field in (
        "wer",
        "cer",
        "substitutions",
        "insertions",
        "deletions",
        "hits",
        "num_utterances",
        "hours",
    ):
        assert parquet[field] == manifest[field]
    rows = read_rows(parquet["hypotheses"])
    assert all(Path(row["audio_filepath"]).is_file() for row in rows)  # the exported audio stays


def test_rerun_reuses_finished_sets_and_a_new_model_redoes_them(
    constant_nemo_model: Callable[[str | None], Path],
    speech_set: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    first = run_evaluate(constant_nemo_model("a"), [str(speech_set)], out)
    hypotheses = out / "speech-set" / "hypotheses.jsonl"
    before = hypotheses.read_bytes()
    caplog.clear()
    with caplog.at_level("INFO", logger="asrflow"):
        again = run_evaluate(constant_nemo_model("a"), [str(speech_set)], out)
    assert "reusing" in caplog.text
    assert again == first and hypotheses.read_bytes() == before

    other = run_evaluate(constant_nemo_model(None), [str(speech_set)], out)
    assert {row["pred_text"] for row in read_rows(str(hypotheses))} == {""}
    assert other["sets"]["speech-set"]["wer"] == 1.0


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"audio_filepath": "audio/u1.wav", "duration": 1.0', "not valid JSON"),
        ('{"audio_filepath": "audio/u1.wav", "duration": 1.0}', "missing field(s) text"),
        ('{"audio_filepath": "audio/nope.wav", "duration": 1.0, "text": "x"}', "audio file not found"),
    ],
)
def test_bad_manifest_line_is_named(
    tiny_nemo_model: Path, speech_set: Path, tmp_path: Path, line: str, message: str
) -> None:
    good = speech_set.read_text().splitlines()[0]
    manifest = speech_set.parent / f"bad-{abs(hash(line))}.json"
    manifest.write_text(f"{good}\n{line}\n")
    with pytest.raises((ManifestError, EvaluateError)) as err:
        run_evaluate(tiny_nemo_model, [str(manifest)], tmp_path / "out")
    assert f"{manifest}:2" in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out" / "card.json").exists()


def test_missing_manifest_and_duplicate_names(
    tiny_nemo_model: Path, speech_set: Path, tmp_path: Path
) -> None:
    with pytest.raises(EvaluateError, match="no such manifest or dataset: .*nothing.json"):
        run_evaluate(tiny_nemo_model, [str(tmp_path / "nothing.json")], tmp_path / "out")
    with pytest.raises(EvaluateError, match="used twice"):
        run_evaluate(tiny_nemo_model, [str(speech_set), str(speech_set)], tmp_path / "out")
    empty = tmp_path / "empty" / "manifest.json"
    empty.parent.mkdir()
    empty.write_text("\n")
    with pytest.raises(ManifestError, match="no entries"):
        run_evaluate(tiny_nemo_model, [str(empty)], tmp_path / "out")


def test_set_names() -> None:
    assert default_set_name("/data/dev-clean/manifest.json") == "dev-clean"
    assert default_set_name("/data/ls/test_other.json") == "test_other"
    assert default_set_name("gs://b/root/datasets/ps/clean/test/" + "a" * 40 + "/raw") == "ps-clean-test"
    assert split_set_spec("dev=gs://b/x.json") == ("dev", "gs://b/x.json")
    assert split_set_spec("/a=b/x.json") == (None, "/a=b/x.json")


# --- champion ------------------------------------------------------------------------------


def test_decide_promotion_rules() -> None:
    assert decide_promotion(0.20, 0.25)[0] is True
    promoted, reason = decide_promotion(0.25, 0.25)
    assert promoted is False and "tie" in reason
    assert decide_promotion(0.30, 0.25)[0] is False
    assert decide_promotion(0.245, 0.25, min_improvement=0.01)[0] is False
    assert decide_promotion(0.235, 0.25, min_improvement=0.01)[0] is True


def test_first_model_becomes_champion_then_a_better_one_replaces_it(
    constant_nemo_model: Callable[[str | None], Path], letter_set: Path, tmp_path: Path
) -> None:
    champion = tmp_path / "models" / "demo" / "champion.json"
    blank = constant_nemo_model(None)  # says nothing: WER 100% on "a"
    first = run_evaluate(
        blank, [f"letters={letter_set}"], tmp_path / "eval-blank", champion_uri=str(champion), max_wer=1.0
    )
    assert first["champion"]["promoted"] is True and first["champion"]["champion_source"] == "none"
    record = json.loads(champion.read_text())
    assert record["model"] == str(blank) and record["sets"]["letters"]["wer"] == 1.0

    says_a = constant_nemo_model("a")  # WER 0% on "a"
    second = run_evaluate(says_a, [f"letters={letter_set}"], tmp_path / "eval-a", champion_uri=str(champion))
    decision = second["champion"]
    assert decision["promoted"] is True
    assert decision["champion_source"] == "recorded"  # same sets: the recorded WER is fair
    assert decision["previous_model"] == str(blank) and decision["previous_mean_wer"] == 1.0
    record = json.loads(champion.read_text())
    assert record["model"] == str(says_a) and record["mean_wer"] == 0.0
    assert "promoted to champion" in (tmp_path / "eval-a" / "report.md").read_text()
    assert not list(champion.parent.glob(".tmp-*"))


def test_a_model_above_the_promotion_ceiling_is_never_promoted(
    constant_nemo_model: Callable[[str | None], Path], letter_set: Path, tmp_path: Path
) -> None:
    champion = tmp_path / "models" / "demo" / "champion.json"
    blank = constant_nemo_model(None)  # WER 100%
    card = run_evaluate(blank, [f"letters={letter_set}"], tmp_path / "eval", champion_uri=str(champion))
    decision = card["champion"]
    assert decision["promoted"] is False and decision["max_wer"] == DEFAULT_MAX_WER == 0.9
    assert "above the promotion ceiling 90.00%" in decision["reason"]
    assert not champion.exists()
    assert "not promoted" in (tmp_path / "eval" / "report.md").read_text()

    run_evaluate(
        constant_nemo_model("a"), [f"letters={letter_set}"], tmp_path / "a", champion_uri=str(champion)
    )
    before = champion.read_bytes()
    card = run_evaluate(blank, [f"letters={letter_set}"], tmp_path / "again", champion_uri=str(champion))
    assert card["champion"]["promoted"] is False and champion.read_bytes() == before
    assert "above the promotion ceiling" in (tmp_path / "again" / "report.md").read_text()


def test_the_component_default_ceiling_is_the_cores() -> None:
    import inspect

    from components.evaluate.component import evaluate

    default = inspect.signature(evaluate.python_func).parameters["max_wer"].default
    assert default == DEFAULT_MAX_WER


def test_a_set_given_twice_is_scored_once() -> None:
    specs = eval_set_specs(["dev=gs://b/dev.json", "test=gs://b/test.json", "dev=gs://b/dev.json"])
    assert specs == ["dev=gs://b/dev.json", "test=gs://b/test.json"]


def test_worse_model_leaves_champion_untouched_after_reevaluating_it(
    constant_nemo_model: Callable[[str | None], Path], letter_set: Path, tmp_path: Path
) -> None:
    champion = tmp_path / "champion.json"
    says_a = constant_nemo_model("a")
    run_evaluate(says_a, [f"letters={letter_set}"], tmp_path / "eval-a", champion_uri=str(champion))
    before = champion.read_bytes()
    stat_before = champion.stat()

    # another set name: the recorded WER is not from these sets, so the champion runs again
    card = run_evaluate(
        constant_nemo_model("b"),
        [f"renamed={letter_set}"],
        tmp_path / "eval-b",
        champion_uri=str(champion),
        max_wer=1.0,  # compared, not stopped by the ceiling
    )
    decision = card["champion"]
    assert card["sets"]["renamed"]["wer"] == 1.0
    assert decision["promoted"] is False
    assert decision["champion_source"] == "re-evaluated"
    assert decision["previous_sets"]["renamed"]["wer"] == 0.0
    assert "not lower" in decision["reason"]
    assert (tmp_path / "eval-b" / "champion" / "renamed" / "hypotheses.jsonl").is_file()
    assert champion.read_bytes() == before and champion.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert "not promoted" in (tmp_path / "eval-b" / "report.md").read_text()


def test_malformed_champion_record_is_named(tiny_nemo_model: Path, speech_set: Path, tmp_path: Path) -> None:
    champion = tmp_path / "champion.json"
    champion.write_text('{"sets": {}}')
    with pytest.raises(EvaluateError, match=f"{champion}: .*'model'"):
        run_evaluate(tiny_nemo_model, [str(speech_set)], tmp_path / "out", champion_uri=str(champion))


# --- gs:// ---------------------------------------------------------------------------------


def test_model_sets_and_outputs_on_gcs(
    constant_nemo_model: Callable[[str | None], Path], speech_set: Path, gcs_bucket: str
) -> None:
    model_uri = f"{gcs_bucket}/runs/r1/model.nemo"
    storage.upload_file(constant_nemo_model("a"), model_uri)
    set_uri = f"{gcs_bucket}/sets/speech"
    storage.upload_file(speech_set, f"{set_uri}/manifest.json")
    for wav in sorted((speech_set.parent / "audio").iterdir()):
        storage.upload_file(wav, f"{set_uri}/audio/{wav.name}")
    out = f"{gcs_bucket}/runs/r1/eval"
    champion = f"{gcs_bucket}/models/demo/champion.json"

    card = core.evaluate(
        model_uri, [f"{set_uri}/manifest.json"], out, champion_uri=champion, device="cpu", echo=False
    )
    assert card["model"] == model_uri and card["champion"]["promoted"] is True
    rows = [json.loads(line) for line in storage.read_text(f"{out}/speech/hypotheses.jsonl").splitlines()]
    assert rows[0]["audio_filepath"] == f"{set_uri}/audio/u0.wav"
    assert {row["pred_text"] for row in rows} == {"a"}
    assert json.loads(storage.read_text(champion))["model"] == model_uri
    assert storage.is_complete(out) and storage.exists(f"{out}/report.md")
    assert card["model_md5"] == storage.file_md5(constant_nemo_model("a"))

    again = core.evaluate(
        model_uri, [f"{set_uri}/manifest.json"], out, champion_uri=champion, device="cpu", echo=False
    )
    assert again["champion"]["champion_source"] == "same-model" and again["champion"]["promoted"] is False


# --- command line --------------------------------------------------------------------------


def _asrflow(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("asrflow")), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )


def test_cli_help_explains() -> None:
    result = _asrflow("evaluate", "--help")
    assert result.returncode == 0, result.stderr
    for words in (
        "MODEL.nemo",
        "MANIFEST",
        "--out",
        "--champion",
        "--batch-size",
        "--device",
        "hypotheses.jsonl",
        "--lm",
        "--lm-alpha",
        "--beam",
        "--tune-lm-alpha",
        "--boost",
        "hybrid",
    ):
        assert words in result.stdout


def test_cli_run_prints_the_card_last(tiny_nemo_model: Path, speech_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _asrflow(
        "evaluate", str(tiny_nemo_model), f"speech={speech_set}", "--out", str(out), "--batch-size", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card == json.loads((out / "card.json").read_text())
    assert "evaluate model set 1/1 speech: utterances: 4/4" in result.stderr  # progress line


def test_cli_bad_manifest_names_file_and_line(tiny_nemo_model: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text('{"audio_filepath": "a.wav", "duration": "long", "text": "x"}\n')
    result = _asrflow("evaluate", str(tiny_nemo_model), str(manifest), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert f"{manifest}:1: field duration must be a number" in result.stderr
    assert "Traceback" not in result.stderr


# --- KFP component -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_component_runs_in_kfp_local(
    constant_nemo_model: Callable[[str | None], Path], letter_set: Path, tmp_path: Path
) -> None:
    from kfp import local

    from components.evaluate.component import evaluate

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    data_root = tmp_path / "root"
    task = evaluate(
        model_uri=str(constant_nemo_model("a")),
        eval_sets=[{"name": "letters", "manifest": str(letter_set)}],
        data_root=str(data_root),
        run_id="run-1",
        champion_name="demo",
        batch_size=4,
    )
    out = data_root / "runs" / "run-1" / "eval"
    card = json.loads(Path(task.outputs["card"].path).read_text())
    assert card == json.loads((out / "card.json").read_text())
    assert task.outputs["card"].metadata["uri"] == str(out)
    assert task.outputs["card"].metadata["promoted"] is True
    assert task.outputs["metrics"].metadata["letters_wer"] == card["sets"]["letters"]["wer"] == 0.0
    champion = json.loads((data_root / "models" / "demo" / "champion.json").read_text())
    assert champion["model"] == str(constant_nemo_model("a"))


def test_eval_set_specs_from_the_pipeline() -> None:
    items = ["gs://b/dev/manifest.json", "test=gs://b/t.json", {"name": "ls", "manifest": "gs://b/ls.json"}]
    assert eval_set_specs(items) == [
        "gs://b/dev/manifest.json",
        "test=gs://b/t.json",
        "ls=gs://b/ls.json",
    ]
    with pytest.raises(EvaluateError, match=r"eval_sets\[0\]"):
        eval_set_specs([{"name": "x"}])
    assert layout.run_eval_dir("gs://b/root", "r1") == "gs://b/root/runs/r1/eval"
    assert layout.champion_uri("gs://b/root", "ps") == "gs://b/root/models/ps/champion.json"


@pytest.mark.gpu
def test_evaluate_on_gpu_matches_cpu(
    tiny_nemo_model: Path,
    constant_nemo_model: Callable[[str | None], Path],
    bundled_eval_manifest: Path,
    tmp_path: Path,
) -> None:
    sets = [str(bundled_eval_manifest)]
    for model in (tiny_nemo_model, constant_nemo_model("a")):
        gpu = core.evaluate(str(model), sets, str(tmp_path / "gpu" / model.stem), device="auto", echo=False)
        cpu = core.evaluate(str(model), sets, str(tmp_path / "cpu" / model.stem), device="cpu", echo=False)
        assert gpu["device"] == "cuda" and cpu["device"] == "cpu"
        check_against_jiwer(gpu["sets"]["validation"])
        assert gpu["sets"]["validation"]["wer"] == pytest.approx(cpu["sets"]["validation"]["wer"], abs=0.02)


# --- model families: an RNN-T model, a hybrid RNN-T + CTC model --------------------------


def nemo_transcripts(model_path: Path, audio: list[str], head: str) -> list[str]:
    """What NeMo itself transcribes with ``head`` of the model, greedy, one file at a time."""
    from nemo.collections.asr.models import ASRModel
    from omegaconf import OmegaConf, open_dict

    model = ASRModel.restore_from(str(model_path), map_location="cpu")
    model.eval()
    if hasattr(model, "ctc_decoding") and hasattr(model, "cur_decoder"):  # a hybrid: pick the head
        base = model.cfg.aux_ctc.decoding if head == "ctc" else model.cfg.decoding
        cfg = OmegaConf.create(OmegaConf.to_container(base))
        with open_dict(cfg):
            cfg.strategy = "greedy_batch"
        model.change_decoding_strategy(cfg, decoder_type=head, verbose=False)
    outputs = model.transcribe(audio, batch_size=1, verbose=False)
    if isinstance(outputs, tuple):
        outputs = outputs[0]
    return [getattr(item, "text", item) for item in outputs]


def set_audio(manifest: Path) -> list[str]:
    return [
        str(manifest.parent / json.loads(line)["audio_filepath"])
        for line in manifest.read_text().splitlines()
    ]


def test_cli_scores_an_rnnt_model_on_its_rnnt_head(
    bpe_nemo_model: Callable[[str], Path], speech_set: Path, tmp_path: Path
) -> None:
    model = bpe_nemo_model("rnnt")
    out = tmp_path / "out"
    result = _asrflow("evaluate", str(model), f"speech={speech_set}", "--out", str(out), "--batch-size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["heads"] == ["rnnt"]
    assert card["served"] == {"head": "rnnt", "strategy": "greedy_batch", "decoding": "rnnt_greedy"}
    assert list(card["decodings"]) == ["rnnt_greedy"]
    rows = check_against_jiwer(card["sets"]["speech"])
    # transcribe gives Hypothesis objects for a transducer: the hypotheses are their texts
    assert [row["pred_text"] for row in rows] == nemo_transcripts(model, set_audio(speech_set), "rnnt")
    assert any(row["pred_text"] for row in rows)
    assert card["sets"]["speech"]["decodings"]["rnnt_greedy"]["wer"] == card["sets"]["speech"]["wer"]


def test_hybrid_is_scored_with_both_heads_and_compared_on_the_served_one(
    bpe_nemo_model: Callable[[str], Path],
    constant_nemo_model: Callable[[str | None], Path],
    speech_set: Path,
    tmp_path: Path,
) -> None:
    model = bpe_nemo_model("hybrid")
    champion = tmp_path / "champion.json"
    out = tmp_path / "hybrid"
    card = core.evaluate(
        str(model),
        [str(speech_set)],
        str(out),
        champion_uri=str(champion),
        device="cpu",
        batch_size=1,
        echo=False,
        max_wer=1000.0,  # an untrained transducer says far more words than there are
    )
    assert card["heads"] == ["rnnt", "ctc"]
    assert card["served"] == {"head": "rnnt", "strategy": "greedy_batch", "decoding": "rnnt_greedy"}
    assert list(card["decodings"]) == ["rnnt_greedy", "ctc_greedy"]
    figures = card["sets"]["speech-set"]
    by_head = {}
    for key, head in (("rnnt_greedy", "rnnt"), ("ctc_greedy", "ctc")):
        rows = check_against_jiwer({**figures["decodings"][key], "num_utterances": len(SENTENCES)})
        by_head[head] = [row["pred_text"] for row in rows]
        assert by_head[head] == nemo_transcripts(model, set_audio(speech_set), head), head
    assert by_head["rnnt"] != by_head["ctc"]  # two heads really decoded
    assert figures["decodings"]["ctc_greedy"]["hypotheses"] == str(
        out / "speech-set" / "ctc_greedy" / "hypotheses.jsonl"
    )
    rnnt_wer, ctc_wer = (figures["decodings"][key]["wer"] for key in ("rnnt_greedy", "ctc_greedy"))
    assert rnnt_wer != ctc_wer
    assert figures["wer"] == card["mean_wer"] == card["mean_wer_by_decoding"]["rnnt_greedy"] == rnnt_wer
    assert card["mean_wer_by_decoding"]["ctc_greedy"] == ctc_wer

    record = json.loads(champion.read_text())  # the first champion: recorded on the served head
    assert record["sets"]["speech-set"]["wer"] == rnnt_wer and record["decoding"]["head"] == "rnnt"
    report = (out / "report.md").read_text()
    assert "Main figures: the served decoding, `rnnt_greedy`: the rnnt head" in report
    assert re.search(r"^\| speech-set +\| rnnt_greedy \(served\) +\| rnnt ", report, re.M), report
    assert re.search(r"^\| speech-set +\| ctc_greedy +\| ctc ", report, re.M), report

    # another set name: the hybrid champion is re-evaluated, and compared on its served head
    challenger = core.evaluate(
        str(constant_nemo_model("a")),
        [f"renamed={speech_set}"],
        str(tmp_path / "challenger"),
        champion_uri=str(champion),
        device="cpu",
        batch_size=1,
        echo=False,
    )
    decision = challenger["champion"]
    assert decision["champion_source"] == "re-evaluated"
    assert decision["previous_sets"]["renamed"]["wer"] == pytest.approx(rnnt_wer)
    assert decision["promoted"] is True


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_component_logs_every_head_of_a_hybrid(
    bpe_nemo_model: Callable[[str], Path], letter_set: Path, tmp_path: Path
) -> None:
    from kfp import local

    from components.evaluate.component import evaluate

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = evaluate(
        model_uri=str(bpe_nemo_model("hybrid")),
        eval_sets=[{"name": "letters", "manifest": str(letter_set)}],
        data_root=str(tmp_path / "root"),
        run_id="run-1",
        batch_size=2,
    )
    card = json.loads(Path(task.outputs["card"].path).read_text())
    metrics = task.outputs["metrics"].metadata
    figures = card["sets"]["letters"]["decodings"]
    assert task.outputs["card"].metadata["served"] == "rnnt_greedy"
    assert metrics["letters_wer"] == metrics["letters_rnnt_greedy_wer"] == figures["rnnt_greedy"]["wer"]
    assert metrics["letters_ctc_greedy_wer"] == figures["ctc_greedy"]["wer"]
    assert metrics["letters_ctc_greedy_cer"] == figures["ctc_greedy"]["cer"]
    assert metrics["mean_ctc_greedy_wer"] == card["mean_wer_by_decoding"]["ctc_greedy"]
    report = Path(task.outputs["report"].path).read_text()
    assert "ctc_greedy" in report and "rnnt_greedy (served)" in report
